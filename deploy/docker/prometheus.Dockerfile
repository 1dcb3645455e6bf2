# Prometheus for the compose demo: Debian's prometheus binary (Go, linked only to glibc) with
# glibc's loader and libc copied from the build host, FROM scratch since nothing can be pulled.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="prometheus" \
      org.opencontainers.image.description="Debian's Prometheus server for the sidecars demo" \
      org.opencontainers.image.source="https://github.com/sidecars/sidecars" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY rootfs/ /
# An empty data directory owned by the user, so that a fresh named volume on it is writable.
COPY --chown=65532:65532 data/ /prometheus/
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus", "--config.file=/etc/prometheus/prometheus.yml", \
            "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
