// CPU time of the processes a throughput run involves, read from /proc
// (Linux), so a report can say which of them was busy: the relay, the bare
// forwarder, the load generator, or the machine as a whole.
import { readFileSync } from 'node:fs';
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

/** Starts watching; the returned function gives each process's share of one core since, and the machine's. */
export function watchCpu(pids: Record<string, number | undefined>): () => CpuShares {
  const began = performance.now();
  const before = Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, processCpuSeconds(pid)]));
  const machineBefore = machineCpuSeconds();
  return () => {
    const seconds = (performance.now() - began) / 1000;
    const machine = machineCpuSeconds();
    return {
      processes: Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, (processCpuSeconds(pid) - before[name]) / seconds])),
      machineBusy: (machine.busy - machineBefore.busy) / (machine.total - machineBefore.total),
      cores: cpus().length,
    };
  };
}
