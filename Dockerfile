# ferry as a container image: one static binary in an otherwise empty image.
#
#   docker build -t ferry .
#       from source (needs the rust image, i.e. a network)
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ferry
#   cp /etc/ssl/certs/ca-certificates.crt target/x86_64-unknown-linux-gnu/release/
#   docker build --target prebuilt -t ferry .
#       offline, from a static binary built on the host (this is what CI does)
#
# The image carries a CA bundle: `ferry sync` talks TLS to real registries, and its HTTP client
# cannot even start without a CA store.
#
#   docker run -d -p 5000:5000 -v ferry-data:/data ferry
#
# `prebuilt` comes first so that the classic builder (dockerd 20.10 without BuildKit, as used by
# docker-compose 1.29) stops there when asked for it; BuildKit only builds the stages a target needs.

FROM scratch AS prebuilt
COPY target/x86_64-unknown-linux-gnu/release/ferry /ferry
COPY target/x86_64-unknown-linux-gnu/release/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 5000
VOLUME /data
ENTRYPOINT ["/ferry"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data"]

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin ferry

FROM scratch AS runtime
COPY --from=build /src/target/x86_64-unknown-linux-gnu/release/ferry /ferry
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 5000
VOLUME /data
ENTRYPOINT ["/ferry"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data", "/data"]
