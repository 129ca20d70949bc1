/**
 * What a process has cost so far, as Linux reports it in /proc: CPU time, and the bytes and
 * calls of its reads and writes. Benchmarks take one before and one after what they measure
 * and subtract (`procCostBetween`).
 */
import { readFile } from 'node:fs/promises';

/** Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

export interface ProcCost {
  /** utime + stime, in seconds. */
  readonly cpuSeconds: number;
  /** Bytes the process caused to be read from storage (`read_bytes`). */
  readonly readBytes: number;
  /** Bytes the process caused to be written to storage (`write_bytes`). */
  readonly writeBytes: number;
  /** Bytes passed to write(2)-like calls, whatever the file system (`wchar`). */
  readonly wchar: number;
  /** read(2)-like calls (`syscr`). */
  readonly syscr: number;
  /** write(2)-like calls (`syscw`). */
  readonly syscw: number;
}

/** The cost of process `pid` so far. */
export async function readProcCost(pid: number): Promise<ProcCost> {
  const stat = await readFile(`/proc/${String(pid)}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces); utime and stime are fields 14, 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const io = await readFile(`/proc/${String(pid)}/io`, 'utf8');
  const field = (name: string): number =>
    Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1] ?? 0);
  return {
    cpuSeconds: ticks / TICKS_PER_SECOND,
    readBytes: field('read_bytes'),
    writeBytes: field('write_bytes'),
    wchar: field('wchar'),
    syscr: field('syscr'),
    syscw: field('syscw'),
  };
}

/** What the process cost between two readings. */
export function procCostBetween(before: ProcCost, after: ProcCost): ProcCost {
  return {
    cpuSeconds: after.cpuSeconds - before.cpuSeconds,
    readBytes: after.readBytes - before.readBytes,
    writeBytes: after.writeBytes - before.writeBytes,
    wchar: after.wchar - before.wchar,
    syscr: after.syscr - before.syscr,
    syscw: after.syscw - before.syscw,
  };
}
