# One image for every role: `scalelab serve ROLE`.
# Build:   docker build -t scalelab .
# Roles:   docker run scalelab serve gateway --config /etc/scalelab/topology.toml --host 0.0.0.0
#          (deploy/compose.yaml and deploy/k8s/ run every role this way)
# Secrets (admin password, PGPASSWORD, SCALELAB_REDIS_URL, SCALELAB_AMQP_URL) come from the
# environment or mounted files at run time; nothing secret is baked into the image.

# --- build -------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p cli \
 && install -m 0755 target/release/scalelab /usr/local/bin/scalelab

# --- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home scalelab
COPY --from=build /usr/local/bin/scalelab /usr/local/bin/scalelab
COPY scalelab.toml scalelab.distributed.toml /etc/scalelab/
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
ENV SCALELAB_PROBE_URL=http://127.0.0.1:5000/health
# Each role answers /health on its own port; set SCALELAB_PROBE_URL to the role's port
# (the balancer's own health is /_lb/health).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/bin/sh", "-c", "exec scalelab probe \"$SCALELAB_PROBE_URL\""]
ENTRYPOINT ["scalelab"]
CMD ["--help"]
