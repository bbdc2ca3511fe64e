// CPU time of the processes a throughput run involves, read from /proc
// (Linux), so a report can say which of them was busy: the relay, the bare
// forwarder, the load generator, or the machine as a whole.
import { readdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';

const TICKS_PER_SECOND = 100;

/** User plus system CPU seconds the process has used; NaN when it cannot be read. */
export function processCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    // Fields after the command name, which may itself hold spaces: utime and stime are the 12th and 13th.
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
  } catch {
    return Number.NaN;
  }
}

/**
 * The Postgres server processes serving the relay's database (a local
 * server titles each backend `postgres: … <user> <database> …`), found by
 * the database name in the relay's DATABASE_URL; none for the embedded
 * database, which runs inside the relay. Read once the relay's pool is open.
 */
export function postgresBackendsOf(relayPid: number | undefined): number[] {
  if (relayPid === undefined) return [];
  try {
    const environment = readFileSync(`/proc/${relayPid}/environ`, 'utf8').split('\0');
    const url = environment.find((entry) => entry.startsWith('DATABASE_URL='))?.slice('DATABASE_URL='.length);
    if (!url) return [];
    const database = new URL(url).pathname.slice(1);
    return readdirSync('/proc')
      .filter((entry) => /^\d+$/.test(entry))
      .filter((pid) => {
        try {
          const title = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
          return title.startsWith('postgres:') && title.split(' ').includes(database);
        } catch {
          return false;
        }
      })
      .map(Number);
  } catch {
    return [];
  }
}

/** Busy and total CPU seconds of the whole machine, all cores. */
function machineCpuSeconds(): { busy: number; total: number } {
  try {
    const [, ...values] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
    const ticks = values.map(Number);
    const total = ticks.reduce((sum, tick) => sum + tick, 0);
    const idle = ticks[3] + (ticks[4] ?? 0);
    return { busy: (total - idle) / TICKS_PER_SECOND, total: total / TICKS_PER_SECOND };
  } catch {
    return { busy: Number.NaN, total: Number.NaN };
  }
}

export interface CpuShares {
  /** Of one core, per watched process. */
  processes: Record<string, number>;
  /** Share of all the machine's cores that were busy (any process, the measured ones included). */
  machineBusy: number;
  cores: number;
}

/**
 * Starts watching; the returned function gives each process's (or group's)
 * share of one core since, and the machine's. A process of a group that
 * exits meanwhile (a pool closing an idle connection) is left out of the
 * group's figure rather than making it unreadable.
 */
export function watchCpu(pids: Record<string, number | readonly number[] | undefined>): () => CpuShares {
  const began = performance.now();
  const groups = Object.entries(pids).map(([name, pid]) => ({
    name,
    single: !Array.isArray(pid),
    before: new Map((Array.isArray(pid) ? pid : [pid]).map((one: number | undefined) => [one, processCpuSeconds(one)] as const)),
  }));
  const machineBefore = machineCpuSeconds();
  return () => {
    const seconds = (performance.now() - began) / 1000;
    const machine = machineCpuSeconds();
    const shareOf = (group: (typeof groups)[number]) => {
      let used = group.single ? Number.NaN : 0;
      for (const [pid, before] of group.before) {
        const delta = processCpuSeconds(pid) - before;
        if (group.single) used = delta;
        else if (Number.isFinite(delta)) used += delta;
      }
      return used / seconds;
    };
    return {
      processes: Object.fromEntries(groups.map((group) => [group.name, shareOf(group)])),
      machineBusy: (machine.busy - machineBefore.busy) / (machine.total - machineBefore.total),
      cores: cpus().length,
    };
  };
}
