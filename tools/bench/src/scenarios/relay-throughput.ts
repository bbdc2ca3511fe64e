// Goal 3 of issue #9: the relay's durable throughput and its latency at half
// that load, beside a bare `ws` forwarder measured the same way in the same
// run. Sender/receiver pairs of authenticated devices talk to the built relay
// (a child process) over real WebSockets: each message is a pre-encrypted
// fixed-size random payload in a `send` frame, stored before the relay answers
// `sent`, delivered to the receiver's socket and deleted on its ack. The bare
// forwarder (a child process too) carries the same frames from sender to
// receiver and the acks back, with no authentication and no storage.
//
// The load generator is this process: it writes prebuilt frame strings and
// reads received frames by position, and its CPU share is reported beside the
// relay's, so a reader can see which side was the limit.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freeLoopbackPort, inheritedEnv, spawnUntilReady, startRelay, type TestRelayProcess } from '@chat/relay-harness';
import type { BenchContext, BenchRow, Scenario } from '../report.js';
import { ratioOf } from '../report.js';
import { formatNumber } from '../report.js';
import { registerAccounts } from '../support/accounts.js';
import { receivingKeys, uploadKeys } from '../support/receiving-keys.js';
import { type CpuShares, postgresBackendsOf } from '../relay-load/cpu.js';
import { type LoadResult, type LoadRun, type PairEndpoints, runLoad } from '../relay-load/load-generator.js';

const BARE_FORWARDER = join(dirname(fileURLToPath(import.meta.url)), '../relay-load/bare-forwarder.js');

interface Sizes {
  pairs: number;
  /** Messages in flight per pair in the closed-loop (throughput) runs. */
  window: number;
  payloadBytes: number;
  warmupMs: number;
  measureMs: number;
}

const FULL: Sizes = { pairs: 16, window: 32, payloadBytes: 256, warmupMs: 2_000, measureMs: 8_000 };
const SMOKE: Sizes = { pairs: 2, window: 4, payloadBytes: 256, warmupMs: 300, measureMs: 1_000 };

const GOAL_RATIO = 0.4;
const GOAL_THROUGHPUT = 20_000;
const GOAL_P99_MS = 25;

/** Optional overrides for exploring (RELAY_BENCH_PAIRS, RELAY_BENCH_WINDOW, RELAY_BENCH_MEASURE_MS, RELAY_BENCH_CPU_PROF=dir). */
function sizesOf(ctx: BenchContext): Sizes {
  const base = ctx.smoke ? SMOKE : FULL;
  const number = (name: string, fallback: number) => (process.env[name] ? Number(process.env[name]) : fallback);
  return {
    ...base,
    pairs: number('RELAY_BENCH_PAIRS', base.pairs),
    window: number('RELAY_BENCH_WINDOW', base.window),
    measureMs: number('RELAY_BENCH_MEASURE_MS', base.measureMs),
  };
}

export const relayThroughput: Scenario = {
  name: 'relay-throughput',
  async run(ctx) {
    const sizes = sizesOf(ctx);
    const cpuProfileDir = process.env.RELAY_BENCH_CPU_PROF;
    const relay = await startRelay({
      logLevel: 'warn',
      nodeFlags: cpuProfileDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfileDir}`] : [],
    });
    const bare = await startBareForwarder();
    try {
      ctx.log(`relay on ${ctx.database} at ${relay.url}, bare forwarder at ${bare.url}; ${sizes.pairs} pairs`);
      const relayPairs = await relayPairsOf(relay, sizes.pairs);
      const barePairs = Array.from({ length: sizes.pairs }, (_, i): PairEndpoints => ({
        sender: { url: `${bare.wsUrl}/pair/${i}/sender` },
        receiver: { url: `${bare.wsUrl}/pair/${i}/receiver` },
        to: `pair${i}`,
        registrationId: 1,
      }));
      // The relay's Postgres backends (none when embedded), looked up as each measured interval begins.
      const watch = { relay: relay.pid, postgres: () => postgresBackendsOf(relay.pid), 'bare forwarder': bare.pid };
      const run = (shape: LoadRun['shape']): LoadRun => ({ shape, payloadBytes: sizes.payloadBytes, warmupMs: sizes.warmupMs, measureMs: sizes.measureMs, watch });

      const closed = run({ kind: 'closed', window: sizes.window });
      const bareMax = await runLoad({ kind: 'bare', pairs: barePairs }, closed);
      ctx.log(`bare forwarder, closed loop: ${describe(bareMax)}`);
      const relayMax = await runLoad({ kind: 'relay', pairs: relayPairs }, closed);
      ctx.log(`relay, closed loop: ${describe(relayMax)}`);

      const halfLoad = Math.max(10, Math.round(relayMax.throughput / 2));
      const paced = run({ kind: 'paced', ratePerSecond: halfLoad });
      const relayHalf = await runLoad({ kind: 'relay', pairs: relayPairs }, paced);
      ctx.log(`relay, paced at ${halfLoad} msg/s: ${describe(relayHalf)}`);
      const bareHalf = await runLoad({ kind: 'bare', pairs: barePairs }, paced);
      ctx.log(`bare forwarder, paced at ${halfLoad} msg/s: ${describe(bareHalf)}`);

      for (const [name, result] of [['relay closed loop', relayMax], ['relay paced', relayHalf]] as const) {
        if (result.lost > 0 || result.errors > 0) {
          throw new Error(`${name}: ${result.lost} messages never delivered, ${result.errors} error frames (first: ${result.firstError ?? 'none'})`);
        }
      }

      const ratio = ratioOf(relayMax.throughput, bareMax.throughput);
      const sizesNote = `${sizes.pairs} pairs, ${sizes.payloadBytes} B payloads, ${formatNumber(sizes.measureMs / 1000)} s measured after ${formatNumber(sizes.warmupMs / 1000)} s warm-up`;
      return [
        {
          scenario: 'relay-throughput',
          metric: 'durable msg/s (stored, delivered, acked)',
          value: relayMax.throughput,
          unit: 'msg/s',
          baseline: { name: 'bare ws forwarder', value: bareMax.throughput },
          ...(ratio !== undefined && { ratio }),
          goal: {
            text: `≥ ${GOAL_RATIO}× bare and ≥ ${formatNumber(GOAL_THROUGHPUT)} msg/s`,
            met: ratio !== undefined && ratio >= GOAL_RATIO && relayMax.throughput >= GOAL_THROUGHPUT,
          },
          note:
            `${sizesNote}, ${sizes.window} in flight per pair; ${ctx.database} database; ${formatNumber(relayMax.received)} delivered, ` +
            `${relayMax.lost} lost, ${relayMax.duplicates} twice, ${formatNumber(relayMax.outOfOrder)} before an earlier send of their pair ` +
            `(sends in flight together are not ordered; a client sends one at a time for order); CPU of one core, relay run: ${cpuNote(relayMax.cpu)}; ` +
            `bare run: ${cpuNote(bareMax.cpu)}`,
        },
        {
          scenario: 'relay-throughput',
          metric: `p99 send→delivery at half load`,
          value: relayHalf.latencyMs.p99,
          unit: 'ms',
          baseline: { name: 'bare ws forwarder, same rate', value: bareHalf.latencyMs.p99 },
          ...(ratioOf(relayHalf.latencyMs.p99, bareHalf.latencyMs.p99) !== undefined && { ratio: ratioOf(relayHalf.latencyMs.p99, bareHalf.latencyMs.p99) }),
          goal: { text: `< ${GOAL_P99_MS} ms`, met: relayHalf.latencyMs.p99 < GOAL_P99_MS },
          note:
            `paced at ${formatNumber(halfLoad)} msg/s (half the relay's measured maximum); p50 ${formatNumber(relayHalf.latencyMs.p50)} ms ` +
            `(bare ${formatNumber(bareHalf.latencyMs.p50)} ms); send→sent p50/p99 ${formatNumber(relayHalf.acceptedMs?.p50 ?? Number.NaN)}/` +
            `${formatNumber(relayHalf.acceptedMs?.p99 ?? Number.NaN)} ms; ${formatNumber(relayHalf.latencyMs.samples)} samples; CPU ${cpuNote(relayHalf.cpu)}`,
        },
      ] satisfies BenchRow[];
    } finally {
      await bare.stop();
      await relay.close();
    }
  },
};

/** Registers one account per sender and per receiver, uploads keys for every receiver, and pairs them. */
async function relayPairsOf(relay: TestRelayProcess, count: number): Promise<PairEndpoints[]> {
  const devices = await registerAccounts(relay.url, count * 2, { prefix: 'tp' });
  const keys = receivingKeys();
  // Senders need keys too: a device without them cannot be addressed, and the relay checks the sender's own account only for `sync`.
  await Promise.all(devices.map((device) => uploadKeys(relay.url, device.accessToken, keys)));
  const wsUrl = `${relay.url.replace(/^http/, 'ws')}/v1/ws`;
  const headers = (token: string) => ({ Authorization: `Bearer ${token}` });
  return Array.from({ length: count }, (_, i) => {
    const sender = devices[2 * i];
    const receiver = devices[2 * i + 1];
    return {
      sender: { url: wsUrl, headers: headers(sender.accessToken) },
      receiver: { url: wsUrl, headers: headers(receiver.accessToken) },
      to: receiver.username,
      registrationId: keys.registrationId,
    };
  });
}

interface BareForwarder {
  url: string;
  wsUrl: string;
  pid: number | undefined;
  stop(): Promise<void>;
}

async function startBareForwarder(): Promise<BareForwarder> {
  const port = await freeLoopbackPort();
  const url = `http://127.0.0.1:${port}`;
  const server = await spawnUntilReady({
    name: 'the bare forwarder',
    args: [BARE_FORWARDER],
    env: { ...inheritedEnv(), PORT: String(port) },
    readyUrl: `${url}/ready`,
  });
  return {
    url,
    wsUrl: `ws://127.0.0.1:${port}`,
    pid: server.process.pid,
    async stop() {
      server.process.kill('SIGTERM');
      await server.exited;
    },
  };
}

function cpuNote(cpu: CpuShares): string {
  const processes = Object.entries(cpu.processes)
    .filter(([, share]) => Number.isFinite(share) && share > 0.005)
    .map(([name, share]) => `${name} ${Math.round(share * 100)}%`);
  return `${processes.join(', ')}; machine ${Math.round(cpu.machineBusy * 100)}% busy of ${cpu.cores} cores`;
}

function describe(result: LoadResult): string {
  return (
    `${formatNumber(result.throughput)} msg/s, p50 ${formatNumber(result.latencyMs.p50)} ms, p99 ${formatNumber(result.latencyMs.p99)} ms, ` +
    `sent ${result.sent}, lost ${result.lost}, duplicates ${result.duplicates}, out of order ${result.outOfOrder}, errors ${result.errors}` +
    `${result.firstError ? ` (${result.firstError})` : ''}; CPU ${cpuNote(result.cpu)}`
  );
}
