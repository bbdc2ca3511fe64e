# syntax=docker/dockerfile:1
# The relay as a container: a build stage with every dependency compiles
# @chat/protocol, @chat/signal-sdk and the relay; the runtime stage holds the
# production dependencies and the compiled output only, and runs as `node`.
#
#   docker build -t chat-relay .
#   docker run --rm chat-relay node apps/relay/dist/tools/sealed-sender-keys.js   # once: keys for the env
#   docker run -p 8080:8080 -v relay-data:/data -e JWT_SECRET=... \
#     -e SEALED_SENDER_SERVER_CERTIFICATE=... -e SEALED_SENDER_SERVER_PRIVATE_KEY=... chat-relay
#
# tools/container-check/run.mjs performs these steps outside Docker (no engine
# runs in CI): it reads this file, so keep to FROM, WORKDIR, COPY, RUN, ENV,
# USER, VOLUME, EXPOSE, HEALTHCHECK and CMD; RUN steps work inside WORKDIR
# except `mkdir -p` / `chown` of absolute paths, which it emulates. npm's
# cache is a BuildKit cache mount, so it never lands in a layer.

FROM node:20-bookworm-slim AS build
WORKDIR /app
# Manifests first: the dependency layer is rebuilt only when they change.
# --ignore-scripts: no install script is needed to build (argon2 and
# libsignal ship prebuilt binaries; better-sqlite3 is for tests only), and the
# root postinstall (the Prisma client) needs the schema, copied below.
COPY package.json package-lock.json ./
COPY apps/relay/package.json apps/relay/
COPY libs/protocol/package.json libs/protocol/
COPY libs/signal-sdk/package.json libs/signal-sdk/
RUN --mount=type=cache,target=/root/.npm npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.base.json prisma.config.ts ./
COPY tools/prisma-generate.mjs tools/
COPY prisma prisma
COPY libs/protocol libs/protocol
COPY libs/signal-sdk libs/signal-sdk
COPY apps/relay apps/relay
RUN node tools/prisma-generate.mjs && npx tsc -b libs/protocol/tsconfig.lib.json libs/signal-sdk/tsconfig.lib.json apps/relay/tsconfig.app.json \
  && node apps/relay/dist/tools/pglite-template.js

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8080 DATA_DIR=/data
WORKDIR /app
COPY package.json package-lock.json ./
COPY apps/relay/package.json apps/relay/
COPY libs/protocol/package.json libs/protocol/
COPY libs/signal-sdk/package.json libs/signal-sdk/
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --ignore-scripts --no-audit --no-fund
COPY prisma/migrations prisma/migrations
COPY --from=build /app/libs/protocol/dist libs/protocol/dist
COPY --from=build /app/apps/relay/dist apps/relay/dist
# The embedded database and development files live in DATA_DIR; a new named
# volume takes this directory's owner, so the relay can write there.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8080) + '/health/live').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
CMD ["node", "apps/relay/dist/main.js"]
