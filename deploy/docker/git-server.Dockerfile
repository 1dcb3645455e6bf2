# A git server for the demo and the container tests: Debian's git (with the shared libraries it
# links, copied from the build host) running `git daemon`, FROM scratch because no base image
# can be pulled here. It serves /srv/git/config.git, an empty bare repository baked in and
# owned by 65532, with receive-pack enabled so that the demo/test pushes commits to it over
# git://. Not hardened for production: it is test infrastructure.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="git-server" \
      org.opencontainers.image.description="git daemon serving /srv/git (demo and tests only)" \
      org.opencontainers.image.source="https://github.com/sidecars/sidecars" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0 AND GPL-2.0-only"
COPY rootfs/ /
COPY --chown=65532:65532 srv/ /srv/
ENV PATH=/usr/lib/git-core:/usr/bin HOME=/srv
USER 65532:65532
EXPOSE 9418
WORKDIR /srv
ENTRYPOINT ["/usr/bin/git", "daemon", "--reuseaddr", "--base-path=/srv/git", "--export-all", \
            "--enable=receive-pack", "--informative-errors", "--listen=0.0.0.0", "--port=9418", "/srv/git"]
