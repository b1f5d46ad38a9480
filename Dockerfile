# syntax=docker/dockerfile:1
# cutover-watchdog: a static binary on distroless, as a non-root numeric user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# musl gives a fully static binary for the distroless/static runtime; ring needs musl-gcc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the criterion bench; cargo wants its file present to read the manifest.
COPY benches ./benches
# No features: the sandbox (API double, fault proxy, demo) stays out of the image.
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/release/cutover-watchdog /cutover-watchdog

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /cutover-watchdog /cutover-watchdog
USER 65532:65532
# webhook and /v1/guards; then /metrics, /healthz, /readyz
EXPOSE 8080 9091
ENV CUTOVER_WATCHDOG_CONFIG=/etc/cutover-watchdog/config/config.yaml
ENTRYPOINT ["/cutover-watchdog", "serve"]
