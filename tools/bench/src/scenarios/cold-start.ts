// Goal 6: the built relay, spawned on a fresh database (a new DATA_DIR for the
// embedded PGlite, which it creates and migrates; with DATABASE_URL also a new
// scratch Postgres database), until /health/ready answers; then stopped and
// started again on the same database, as a restart is. The baseline is a bare
// `node -e` HTTP server spawned and polled the same way: what Node itself costs
// to start on this machine. Each note also gives the CPU seconds the process
// had used when it answered, which other load on the machine does not inflate.
import { freeLoopbackPort, inheritedEnv, spawnUntilReady, startRelay } from '@chat/relay-harness';
import type { BenchContext, BenchRow, Scenario } from '../report.js';
import { ratioOf } from '../report.js';
import { processCpuSeconds } from '../relay-load/cpu.js';
import { median } from '../stats.js';

const GOAL_MS = 3_000;
const POLL_MS = 10;
const BARE_SERVER = `require('node:http').createServer((_, res) => res.end('ok')).listen(Number(process.env.PORT), '127.0.0.1')`;

export const coldStart: Scenario = {
  name: 'cold-start',
  async run(ctx) {
    const runs = ctx.smoke ? 1 : 5;
    const samples = new Map<string, number[]>();
    const cpu = new Map<string, number[]>();
    const add = (key: string, start: Start) => {
      samples.set(key, [...(samples.get(key) ?? []), start.ms]);
      cpu.set(key, [...(cpu.get(key) ?? []), start.cpuSeconds]);
    };
    for (let run = 0; run < runs; run++) {
      add('bare', await bareServerStart());
      const embedded = await relayReadyMs(ctx, true);
      add('fresh embedded', embedded.fresh);
      add('existing embedded', embedded.restart);
      if (ctx.database === 'postgres') {
        const postgres = await relayReadyMs(ctx, false);
        add('fresh Postgres', postgres.fresh);
        add('existing Postgres', postgres.restart);
      }
    }
    const bare = samples.get('bare') ?? [];
    samples.delete('bare');
    ctx.log(`bare node: ${bare.map(Math.round).join(', ')} ms`);
    const baseline = { name: 'bare node http server', value: median(bare) };
    return [...samples].map(([database, ms]): BenchRow => ({
      scenario: 'cold-start',
      metric: `spawn to ready, ${database} database`,
      value: median(ms),
      unit: 'ms',
      baseline,
      ratio: ratioOf(median(ms), baseline.value),
      // The goal is the embedded database; a fresh one is an install's first start, an existing one every later start.
      ...(database.endsWith('embedded') && { goal: { text: '< 3 s', met: median(ms) < GOAL_MS } }),
      note:
        `median of ${runs} (${ms.map((value) => Math.round(value)).join(', ')} ms); CPU used by then ${median(cpu.get(database) ?? []).toFixed(2)} s ` +
        `(bare node ${median(cpu.get('bare') ?? []).toFixed(2)} s); /health/ready polled every ${POLL_MS} ms, LOG_LEVEL=warn`,
    }));
  },
};

interface Start {
  ms: number;
  cpuSeconds: number;
}

/** The first start on a fresh database, and a second start on it after a SIGTERM stop. */
async function relayReadyMs(ctx: BenchContext, embedded: boolean): Promise<{ fresh: Start; restart: Start }> {
  // The scratch database (Postgres) or DATA_DIR is made before the spawn; the relay creates and migrates it while starting.
  const relay = await startRelay({ logLevel: 'warn', readyPollMs: POLL_MS, embedded });
  try {
    const fresh = { ms: relay.readyAfterMs, cpuSeconds: processCpuSeconds(relay.pid) };
    await relay.stop();
    await relay.start();
    const restart = { ms: relay.readyAfterMs, cpuSeconds: processCpuSeconds(relay.pid) };
    ctx.log(
      `relay on ${embedded ? 'embedded' : 'Postgres'}: ready after ${Math.round(fresh.ms)} ms fresh (${fresh.cpuSeconds.toFixed(2)} s CPU), ` +
        `${Math.round(restart.ms)} ms restarted (${restart.cpuSeconds.toFixed(2)} s CPU)`,
    );
    return { fresh, restart };
  } finally {
    await relay.close();
  }
}

async function bareServerStart(): Promise<Start> {
  const port = await freeLoopbackPort();
  const server = await spawnUntilReady({
    name: 'the bare server',
    args: ['-e', BARE_SERVER],
    env: { ...inheritedEnv(), PORT: String(port) },
    readyUrl: `http://127.0.0.1:${port}/health/ready`,
    readyPollMs: POLL_MS,
  });
  const cpuSeconds = processCpuSeconds(server.process.pid);
  server.process.kill('SIGKILL');
  await server.exited;
  return { ms: server.readyAfterMs, cpuSeconds };
}
