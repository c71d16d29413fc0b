# Build stage
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The simulator's benchmarks embed a recorded full-state upload.
COPY tests/fixtures ./tests/fixtures
COPY migrations ./migrations
COPY build.rs ./build.rs
RUN cargo build --release --locked

# Runtime stage
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /app roost && mkdir -p /app/data && chown roost /app/data
COPY --from=build /src/target/release/roost /usr/local/bin/roost
WORKDIR /app
USER roost
ENV SQLITE3_DB_PATH=/app/data/database.sqlite \
    DEBUG_LOGS_DIR=/app/data/debug-logs \
    DEVICE_LOGS_DIR=/app/data/device-logs \
    SERVER_PORT=8000 \
    CONTROL_PORT=8082
EXPOSE 8000 8082
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["roost", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["roost"]
