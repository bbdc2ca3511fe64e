// Goal 4: the relay's memory per authenticated, open, idle WebSocket, at
// 10,000 sockets (smoke: 100), beside a bare `ws` server holding as many.
//
// Each socket is a real device connection: an account registered over HTTP,
// its access token on the upgrade request, ready at its `queue-empty` frame
// (authenticated, attached to delivery, its queue read). Memory is read in
// the server's process through its inspector after forced full collections
// (support/inspector.ts): once after the registrations with no socket open,
// once with half the sockets open and once with all of them. Per socket =
// (reading at N − reading at 0) / N, for the V8 heap and the resident set;
// the note gives the slope between N/2 and N too, which leaves out pages
// the process had freed (after the registrations) and took back for sockets.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WS_PATH } from '@chat/protocol';
import { freeLoopbackPort, inheritedEnv, spawnUntilReady, startRelay } from '@chat/relay-harness';
import type WebSocket from 'ws';
import { type BenchContext, type BenchRow, ratioOf, type Scenario } from '../report.js';
import { nowMs } from '../stats.js';
import { registerAccounts } from '../support/accounts.js';
import { InspectorClient, inspectFlag, type MemoryReading } from '../support/inspector.js';
import { closeSockets, frameOfType, openSockets } from '../support/sockets.js';

const GOAL_KB = 10;
const BARE_SERVER = join(dirname(fileURLToPath(import.meta.url)), '../support/bare-ws-server.js');
/** How long the sockets sit idle before the reading (the relay's heartbeat is every 30 s). */
const IDLE_MS = 2_000;

interface SocketMemory {
  /** KB per socket, (N − 0) / N. */
  heapKB: number;
  rssKB: number;
  /** KB per socket between N/2 and N. */
  heapSlopeKB: number;
  rssSlopeKB: number;
  /** Milliseconds to open (and ready) all N. */
  openMs: number;
}

export const idleConnections: Scenario = {
  name: 'idle-connections',
  async run(ctx: BenchContext): Promise<BenchRow[]> {
    const count = ctx.smoke ? 100 : 10_000;
    const relay = await measureRelay(ctx, count);
    const bare = await measureBareServer(ctx, count);
    const note = (memory: SocketMemory, what: 'heap' | 'rss') =>
      `${count.toLocaleString('en-US')} sockets; (N − 0)/N; N/2→N slope ${(what === 'heap' ? memory.heapSlopeKB : memory.rssSlopeKB).toFixed(2)} KB ` +
      `(bare ${(what === 'heap' ? bare.heapSlopeKB : bare.rssSlopeKB).toFixed(2)}); opened in ${(memory.openMs / 1000).toFixed(1)} s`;
    return [
      {
        scenario: 'idle-connections',
        metric: 'relay heap per authenticated idle socket',
        value: relay.memory.heapKB,
        unit: 'KB',
        baseline: { name: 'bare ws server', value: bare.heapKB },
        ratio: ratioOf(relay.memory.heapKB, bare.heapKB),
        goal: { text: `≤ ${GOAL_KB} KB`, met: relay.memory.heapKB <= GOAL_KB },
        note: `${note(relay.memory, 'heap')}; V8 heap after full GCs`,
      },
      {
        scenario: 'idle-connections',
        metric: 'relay RSS per authenticated idle socket',
        value: relay.memory.rssKB,
        unit: 'KB',
        baseline: { name: 'bare ws server', value: bare.rssKB },
        ratio: ratioOf(relay.memory.rssKB, bare.rssKB),
        goal: { text: `≤ ${GOAL_KB} KB`, met: relay.memory.rssKB <= GOAL_KB },
        note: `${note(relay.memory, 'rss')}; permessage-deflate ${relay.deflate ? 'ON' : 'off'}`,
      },
      {
        scenario: 'idle-connections',
        metric: 'register an account (set-up cost)',
        value: relay.registerMs / count,
        unit: 'ms',
        note: `${count.toLocaleString('en-US')} accounts over HTTP, 8 in flight, cheapest Argon2id; ${(relay.registerMs / 1000).toFixed(1)} s in all`,
      },
    ];
  },
};

async function measureRelay(ctx: BenchContext, count: number): Promise<{ memory: SocketMemory; registerMs: number; deflate: boolean }> {
  const inspectorPort = await freeLoopbackPort();
  // Every socket comes from 127.0.0.1: lift the per-address cap (WS_MAX_CONNECTIONS_PER_IP, 256 by default) above them.
  const relay = await startRelay({
    logLevel: 'warn',
    nodeFlags: [inspectFlag(inspectorPort)],
    env: { WS_MAX_CONNECTIONS_PER_IP: String(count + 1) },
  });
  let inspector: InspectorClient | undefined;
  let sockets: WebSocket[] = [];
  try {
    ctx.log(`registering ${count} accounts`);
    const began = nowMs();
    const devices = await registerAccounts(relay.url, count, {
      prefix: 'idle',
      onProgress: (done) => ctx.log(`registered ${done}`),
    });
    const registerMs = nowMs() - began;
    ctx.log(`registered ${count} in ${(registerMs / 1000).toFixed(1)} s`);
    inspector = await InspectorClient.connect(inspectorPort);
    const wsUrl = `${relay.url.replace(/^http/, 'ws')}${WS_PATH}`;
    const memory = await measureSockets(ctx, 'relay', inspector, count, async (from, to) =>
      openSockets(wsUrl, to - from, {
        headers: (index) => ({ Authorization: `Bearer ${devices[from + index].accessToken}` }),
        ready: (socket) => frameOfType(socket, 'queue-empty'),
        onProgress: (open) => ctx.log(`relay: ${from + open} sockets ready`),
      }),
      (opened) => (sockets = sockets.concat(opened)),
    );
    return { memory, registerMs, deflate: sockets.some((socket) => socket.extensions !== '') };
  } finally {
    closeSockets(sockets);
    inspector?.close();
    await relay.close();
  }
}

async function measureBareServer(ctx: BenchContext, count: number): Promise<SocketMemory> {
  const [port, inspectorPort] = [await freeLoopbackPort(), await freeLoopbackPort()];
  const server = await spawnUntilReady({
    name: 'the bare ws server',
    args: [inspectFlag(inspectorPort), BARE_SERVER],
    env: { ...inheritedEnv(), PORT: String(port) },
    readyUrl: `http://127.0.0.1:${port}/`,
  });
  let inspector: InspectorClient | undefined;
  let sockets: WebSocket[] = [];
  try {
    inspector = await InspectorClient.connect(inspectorPort);
    return await measureSockets(
      ctx,
      'bare ws',
      inspector,
      count,
      (from, to) => openSockets(`ws://127.0.0.1:${port}/`, to - from),
      (opened) => (sockets = sockets.concat(opened)),
    );
  } finally {
    closeSockets(sockets);
    inspector?.close();
    server.process.kill('SIGKILL');
    await server.exited;
  }
}

/** Readings at 0, N/2 and N open sockets, after `IDLE_MS` idle each time. */
async function measureSockets(
  ctx: BenchContext,
  label: string,
  inspector: InspectorClient,
  count: number,
  open: (from: number, to: number) => Promise<WebSocket[]>,
  keep: (sockets: WebSocket[]) => void,
): Promise<SocketMemory> {
  const half = Math.floor(count / 2);
  const atZero = await inspector.readMemory();
  const began = nowMs();
  keep(await open(0, half));
  const openFirstMs = nowMs() - began;
  await sleep(IDLE_MS);
  const atHalf = await inspector.readMemory();
  const resumed = nowMs();
  keep(await open(half, count));
  const openMs = openFirstMs + nowMs() - resumed;
  await sleep(IDLE_MS);
  const atFull = await inspector.readMemory();
  ctx.log(`${label}: ${describe(atZero)} at 0, ${describe(atHalf)} at ${half}, ${describe(atFull)} at ${count}`);
  const perSocketKB = (from: MemoryReading, to: MemoryReading, sockets: number, field: 'heapUsed' | 'rss') =>
    (to[field] - from[field]) / sockets / 1024;
  return {
    heapKB: perSocketKB(atZero, atFull, count, 'heapUsed'),
    rssKB: perSocketKB(atZero, atFull, count, 'rss'),
    heapSlopeKB: perSocketKB(atHalf, atFull, count - half, 'heapUsed'),
    rssSlopeKB: perSocketKB(atHalf, atFull, count - half, 'rss'),
    openMs,
  };
}

const describe = (reading: MemoryReading) => `heap ${mib(reading.heapUsed)} MiB, RSS ${mib(reading.rss)} MiB`;
const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
