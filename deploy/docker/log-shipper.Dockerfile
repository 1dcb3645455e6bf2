# The log-shipper sidecar: one static binary, a CA bundle and a passwd entry, nothing else (no
# shell). Built by scripts/images.sh, which stages the binary (built with crt-static on the
# host: no image can be pulled here, so there is no builder stage) into the build context.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
ARG DESCRIPTION="log-shipper sidecar"
LABEL org.opencontainers.image.title="log-shipper" \
      org.opencontainers.image.description="${DESCRIPTION}" \
      org.opencontainers.image.source="https://github.com/sidecars/sidecars" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY rootfs/ /
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
EXPOSE 9904
ENTRYPOINT ["/usr/local/bin/log-shipper"]
