// Goal 6: the built relay, spawned on a fresh database (a new DATA_DIR for the
// embedded PGlite, which it creates and migrates; with DATABASE_URL also a new
// scratch Postgres database), until /health/ready answers. The baseline is a
// bare `node -e` HTTP server spawned and polled the same way: what Node itself
// costs to start on this machine.
import { freeLoopbackPort, inheritedEnv, spawnUntilReady, startRelay } from '@chat/relay-harness';
import type { BenchContext, BenchRow, Scenario } from '../report.js';
import { ratioOf } from '../report.js';
import { median } from '../stats.js';

const GOAL_MS = 3_000;
const POLL_MS = 10;
const BARE_SERVER = `require('node:http').createServer((_, res) => res.end('ok')).listen(Number(process.env.PORT), '127.0.0.1')`;

export const coldStart: Scenario = {
  name: 'cold-start',
  async run(ctx) {
    const runs = ctx.smoke ? 1 : 5;
    const bare: number[] = [];
    const embedded: number[] = [];
    const postgres: number[] = [];
    for (let run = 0; run < runs; run++) {
      bare.push(await bareServerReadyMs());
      embedded.push(await relayReadyMs(ctx, true));
      if (ctx.database === 'postgres') postgres.push(await relayReadyMs(ctx, false));
    }
    ctx.log(`bare ${bare.map(Math.round).join(', ')} ms; embedded ${embedded.map(Math.round).join(', ')} ms` +
      (postgres.length > 0 ? `; postgres ${postgres.map(Math.round).join(', ')} ms` : ''));
    const baseline = { name: 'bare node http server', value: median(bare) };
    const row = (database: string, samples: number[], goal: boolean): BenchRow => ({
      scenario: 'cold-start',
      metric: `spawn to ready, fresh ${database} database`,
      value: median(samples),
      unit: 'ms',
      baseline,
      ratio: ratioOf(median(samples), baseline.value),
      ...(goal && { goal: { text: '< 3 s', met: median(samples) < GOAL_MS } }),
      note: `median of ${runs} (${samples.map((ms) => Math.round(ms)).join(', ')} ms), /health/ready polled every ${POLL_MS} ms, LOG_LEVEL=warn`,
    });
    return [row('embedded', embedded, true), ...(postgres.length > 0 ? [row('Postgres', postgres, false)] : [])];
  },
};

async function relayReadyMs(ctx: BenchContext, embedded: boolean): Promise<number> {
  // The scratch database (Postgres) or DATA_DIR is made before the spawn; the relay migrates it while starting.
  const relay = await startRelay({ logLevel: 'warn', readyPollMs: POLL_MS, embedded });
  try {
    return relay.readyAfterMs;
  } finally {
    await relay.close();
    ctx.log(`relay on ${embedded ? 'embedded' : 'Postgres'}: ready after ${Math.round(relay.readyAfterMs)} ms`);
  }
}

async function bareServerReadyMs(): Promise<number> {
  const port = await freeLoopbackPort();
  const server = await spawnUntilReady({
    name: 'the bare server',
    args: ['-e', BARE_SERVER],
    env: { ...inheritedEnv(), PORT: String(port) },
    readyUrl: `http://127.0.0.1:${port}/health/ready`,
    readyPollMs: POLL_MS,
  });
  server.process.kill('SIGKILL');
  await server.exited;
  return server.readyAfterMs;
}
