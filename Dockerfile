# The chorus image: one statically linked binary and nothing else.
#
#   make static                  # bin/chorus-linux-amd64 (make static ARCH=arm64 for arm64)
#   docker build -t chorus .
#
# The binary is built outside Docker, so the build needs no network: there is
# no RUN step and no base image to pull (scratch is empty). Building needs
# BuildKit, Docker's default builder since 23.0: it sets TARGETARCH and creates
# the WORKDIR owned by USER. docker-compose.yml runs three nodes from it;
# README.md, "Operations", says how.
FROM scratch

ARG TARGETARCH
COPY bin/chorus-linux-${TARGETARCH} /chorus

# A numeric user, so no /etc/passwd is needed; 65532 is the usual "nonroot".
USER 65532:65532

# The node's raft log, snapshots and epoch. A named volume mounted here starts
# out owned by 65532; a host directory mounted here must be writable by it.
WORKDIR /data
VOLUME /data

# Every serve flag has a CHORUS_* environment twin (--data-dir is
# CHORUS_DATA_DIR). The operator commands run in the container read only
# CHORUS_ADDR, CHORUS_ADMIN_TOKEN and CHORUS_CA_CERT.
ENV CHORUS_DATA_DIR=/data

# HTTP and WebSocket (--http-addr), and the peer port (--peer-addr).
EXPOSE 8081 9081

ENTRYPOINT ["/chorus"]
CMD ["serve"]
