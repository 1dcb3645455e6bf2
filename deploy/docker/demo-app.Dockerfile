# The demo "legacy app" (examples/demo-app) for the compose demo and the container tests.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG DESCRIPTION="demo app"
LABEL org.opencontainers.image.title="demo-app" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.source="https://github.com/sidecars/sidecars" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY rootfs/ /
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/demo-app"]
CMD ["serve"]
