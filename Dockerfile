# syntax=docker/dockerfile:1
# tracker container image: docs/deployment.md ("Containers").
#
#   docker build -t tracker .
#   docker run -d --name tracker --network host -v tracker-journal:/var/lib/tracker \
#     --security-opt seccomp=docker/seccomp-io_uring.json --ulimit memlock=67108864 \
#     --ulimit nofile=1048576 --stop-timeout 60 --restart on-failure tracker
#
# Docker's default seccomp profile (Docker ≥ 25) blocks io_uring_setup/enter/register, and the
# tracker needs them: without the --security-opt above every shard fails at start with
# "io_uring_setup was denied". The memlock ulimit covers io_uring rings on kernels that charge
# them to locked memory (< 5.12 and some accounting setups).

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole build context (.dockerignore leaves out target/, .git and journals): Cargo.toml names
# targets under tools/, benches/ and examples/, and cargo refuses a manifest whose targets are
# missing, so copying a hand-picked subset breaks whenever a target is added.
COPY . .
# BuildKit cache mounts keep the registry and the target dir between builds, so a source change
# recompiles the crate, not librdkafka and OpenSSL. The target dir is a cache, not a layer: the
# binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tracker \
    && install -m 0755 target/release/tracker /usr/local/bin/tracker \
    && strip --strip-debug /usr/local/bin/tracker

FROM debian:bookworm-slim
# CA certificates: the statically linked OpenSSL (librdkafka's TLS) looks for the system store,
# and slim images ship none, so a Kafka collector over TLS to a public-CA cluster would fail
# with "certificate verify failed".
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid so volume ownership is predictable across image versions.
RUN groupadd --system --gid 10001 tracker \
    && useradd --system --uid 10001 --gid tracker --home-dir /var/lib/tracker --no-create-home \
       --shell /usr/sbin/nologin tracker \
    && install -d -o tracker -g tracker -m 0750 /var/lib/tracker \
    && install -d -m 0755 /etc/tracker
COPY --from=build /usr/local/bin/tracker /usr/local/bin/tracker
COPY config/tracker.toml /etc/tracker/tracker.toml
USER tracker:tracker
# Relative paths of a config (journal.dir, admin.hlog_path, a jsonl collector's path) land on the
# volume, which this user can write, not in / which it cannot.
WORKDIR /var/lib/tracker
VOLUME /var/lib/tracker
EXPOSE 8080
# SIGTERM drains rings into the journal and syncs; give it time (docker stop -t 60).
STOPSIGNAL SIGTERM
# Health: the admin listener's /health (loopback 9090, [admin] listen) answers 200 while every
# reactor turns (503 for one stuck 5 s: the systemd watchdog's check, for containers) and the
# process is alive. Uses bash's /dev/tcp, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /health HTTP/1.1\\r\\nHost: health\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q '^HTTP/1.1 200'"]
ENTRYPOINT ["/usr/local/bin/tracker"]
CMD ["serve", "--config", "/etc/tracker/tracker.toml", "--journal-dir", "/var/lib/tracker/journal"]
