// The contract between run.ts and the scenarios (issue #9): each scenario
// returns rows, each figure beside the baseline it was measured against in the
// same run, and run.ts prints them as one table and writes them as JSON.

export interface BenchRow {
  /** 'sdk-overhead', 'session-setup', 'relay-throughput', 'idle-connections', 'group-fanout', 'cold-start' */
  scenario: string;
  /** What was measured, short: 'encrypt+decrypt per message'. */
  metric: string;
  value: number;
  /** 'µs', 'ms', 'msg/s', 'KB', 'set-ups/s' */
  unit: string;
  /** Measured in the same run, in the same unit. */
  baseline?: { name: string; value: number };
  /** value / baseline.value */
  ratio?: number;
  /** e.g. { text: '≤ 1.15× raw libsignal', met: true } */
  goal?: { text: string; met: boolean };
  /** Sizes, counts: '2,000 messages, 8 pairs'. */
  note?: string;
}

export interface BenchContext {
  smoke: boolean;
  database: 'embedded' | 'postgres';
  /** Progress, to stderr. */
  log(message: string): void;
}

export interface Scenario {
  name: string;
  run(ctx: BenchContext): Promise<BenchRow[]>;
}

/** The machine a run was measured on, as the JSON records it. */
export interface Machine {
  cpus: number;
  model: string;
  memoryGiB: number;
  node: string;
  platform: string;
}

/** What `--out` writes. */
export interface BenchReport {
  machine: Machine;
  database: BenchContext['database'];
  smoke: boolean;
  startedAt: string;
  rows: BenchRow[];
  /** Scenarios that threw, with the error; their rows are missing. */
  failures: Array<{ scenario: string; error: string }>;
}

/** `value / baseline.value`, or undefined when there is no baseline or it is zero. */
export function ratioOf(value: number, baseline: number | undefined): number | undefined {
  return baseline === undefined || baseline === 0 || !Number.isFinite(baseline) ? undefined : value / baseline;
}

/**
 * A figure as a person reads it: thousands separated, and about three
 * significant digits below a hundred (0.312, 4.56, 23.4, 1,234).
 */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  const fractionDigits = magnitude >= 100 || magnitude === 0 ? 0 : magnitude >= 10 ? 1 : magnitude >= 1 ? 2 : 3;
  return value.toLocaleString('en-US', { minimumFractionDigits: fractionDigits, maximumFractionDigits: fractionDigits });
}

export const formatRatio = (ratio: number): string => `${ratio.toFixed(ratio >= 10 ? 1 : 2)}×`;

const COLUMNS = ['scenario', 'metric', 'value', 'baseline', 'ratio', 'goal', 'met'] as const;

/** The rows as one plain-text table, with each row's note listed below it. */
export function formatTable(rows: readonly BenchRow[]): string {
  const cells = rows.map((row) => [
    row.scenario,
    row.metric,
    `${formatNumber(row.value)} ${row.unit}`,
    row.baseline ? `${formatNumber(row.baseline.value)} ${row.unit} (${row.baseline.name})` : '',
    row.ratio === undefined ? '' : formatRatio(row.ratio),
    row.goal?.text ?? '',
    row.goal ? (row.goal.met ? 'yes' : 'NO') : '',
  ]);
  const widths = COLUMNS.map((title, column) => Math.max(title.length, ...cells.map((line) => line[column].length)));
  // Numbers (value, baseline, ratio) align right, words left.
  const rightAligned = new Set([2, 3, 4]);
  const line = (values: readonly string[]) =>
    values
      .map((value, column) => (rightAligned.has(column) ? value.padStart(widths[column]) : value.padEnd(widths[column])))
      .join('  ')
      .trimEnd();
  const notes = rows.flatMap((row) => (row.note ? [`  ${row.scenario}, ${row.metric}: ${row.note}`] : []));
  return [
    line(COLUMNS),
    line(widths.map((width) => '-'.repeat(width))),
    ...cells.map(line),
    ...(notes.length > 0 ? ['', 'notes:', ...notes] : []),
  ].join('\n');
}
