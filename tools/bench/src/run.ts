// `npm run bench`: runs the scenarios one after another, prints one table (each
// figure beside its baseline from the same run) and writes it as JSON. It exits
// non-zero only when a scenario throws; a missed goal is a result, not a failure.
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, platform, release, totalmem } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { type BenchContext, type BenchReport, type BenchRow, formatTable, type Machine, type Scenario } from './report.js';
import { coldStart } from './scenarios/cold-start.js';
import { groupFanout } from './scenarios/group-fanout.js';
import { idleConnections } from './scenarios/idle-connections.js';
import { relayThroughput } from './scenarios/relay-throughput.js';
import { sdkOverhead } from './scenarios/sdk-overhead.js';
import { sessionSetup } from './scenarios/session-setup.js';

// In the order the issue lists the goals.
const SCENARIOS: Scenario[] = [sdkOverhead, sessionSetup, relayThroughput, idleConnections, groupFanout, coldStart];

const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const USAGE = `usage: npm run bench -- [--smoke] [--only <name,name>] [--out <file.json>]
  --smoke   a few seconds per scenario, tiny sizes (CI)
  --only    scenarios to run: ${SCENARIOS.map((scenario) => scenario.name).join(', ') || '(none registered)'}
  --out     JSON report (default bench-results/<date>-<database>.json)
DATABASE_URL set: the relay on Postgres (a scratch database per relay), else on its embedded PGlite.`;

async function main(): Promise<number> {
  let options: { smoke: boolean; only?: string; out?: string };
  try {
    const { values } = parseArgs({
      options: { smoke: { type: 'boolean', default: false }, only: { type: 'string' }, out: { type: 'string' }, help: { type: 'boolean' } },
      strict: true,
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    options = { smoke: values.smoke ?? false, only: values.only, out: values.out };
  } catch (error) {
    console.error(`${(error as Error).message}\n${USAGE}`);
    return 2;
  }

  const wanted = options.only?.split(',').map((name) => name.trim()).filter(Boolean);
  const unknown = wanted?.filter((name) => !SCENARIOS.some((scenario) => scenario.name === name)) ?? [];
  if (unknown.length > 0) {
    console.error(`unknown scenario: ${unknown.join(', ')}\n${USAGE}`);
    return 2;
  }
  const selected = wanted ? SCENARIOS.filter((scenario) => wanted.includes(scenario.name)) : SCENARIOS;

  const database: BenchContext['database'] = process.env.DATABASE_URL ? 'postgres' : 'embedded';
  const startedAt = new Date().toISOString();
  const machine = describeMachine();
  console.error(
    `bench: ${selected.length} scenario(s), ${database} database${options.smoke ? ', smoke' : ''}; ` +
      `${machine.cpus} × ${machine.model}, ${machine.memoryGiB} GiB, node ${machine.node}`,
  );

  const rows: BenchRow[] = [];
  const failures: BenchReport['failures'] = [];
  for (const scenario of selected) {
    const ctx: BenchContext = {
      smoke: options.smoke,
      database,
      log: (message) => console.error(`[${scenario.name}] ${message}`),
    };
    const began = performance.now();
    try {
      rows.push(...(await scenario.run(ctx)));
      ctx.log(`done in ${((performance.now() - began) / 1000).toFixed(1)} s`);
    } catch (error) {
      const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
      ctx.log(`FAILED: ${text}`);
      failures.push({ scenario: scenario.name, error: text });
    }
  }

  console.log(`\n${formatTable(rows)}`);
  if (failures.length > 0) console.log(`\nfailed: ${failures.map((failure) => failure.scenario).join(', ')}`);

  const report: BenchReport = { machine, database, smoke: options.smoke, startedAt, rows, failures };
  const out = options.out
    ? resolve(options.out)
    : resolve(REPO_ROOT, 'bench-results', `${startedAt.replace(/[:.]/g, '-')}-${database}.json`);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, `${JSON.stringify(report, null, 2)}\n`);
  console.error(`bench: wrote ${out}`);
  return failures.length > 0 ? 1 : 0;
}

function describeMachine(): Machine {
  const cores = cpus();
  return {
    cpus: cores.length,
    model: cores[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${platform()} ${release()}`,
  };
}

// Exit explicitly: a scenario that leaves a handle open must not hang CI after the report is written.
process.exit(await main());
