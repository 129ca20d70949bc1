/**
 * What a process has cost so far, as Linux reports it in /proc: CPU time, and the bytes and
 * calls of its reads and writes. Benchmarks take one before and one after what they measure
 * and subtract (`procCostBetween`). And the ports a process listens on, for tests that check a
 * process opened what it was told to.
 */
import { readdir, readFile, readlink } from 'node:fs/promises';

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
  /** Page faults served without storage (`minflt`): mostly first touches of new memory. */
  readonly minorFaults: number;
}

/** The cost of process `pid` so far. */
export async function readProcCost(pid: number): Promise<ProcCost> {
  const stat = await readStatFields(`/proc/${String(pid)}/stat`);
  const io = await readFile(`/proc/${String(pid)}/io`, 'utf8');
  const field = (name: string): number =>
    Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(io)?.[1] ?? 0);
  return {
    cpuSeconds: (Number(stat[11]) + Number(stat[12])) / TICKS_PER_SECOND,
    readBytes: field('read_bytes'),
    writeBytes: field('write_bytes'),
    wchar: field('wchar'),
    syscr: field('syscr'),
    syscw: field('syscw'),
    minorFaults: Number(stat[7]),
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
    minorFaults: after.minorFaults - before.minorFaults,
  };
}

/** CPU time of a process split by thread, in seconds: its main thread, and all the others. */
export interface ThreadCpu {
  /** The main thread (its id is the process's): JavaScript, hashing, system calls. */
  readonly mainSeconds: number;
  /** Every other thread: in Node, V8's garbage-collector workers and libuv's thread pool. */
  readonly otherSeconds: number;
}

/**
 * The process's CPU time by thread, from /proc/PID/task/TID/stat. Threads that ended between
 * two readings drop out of the second one, so the split is for threads that live as long as
 * the process (Node's are started once).
 */
export async function readThreadCpu(pid: number): Promise<ThreadCpu> {
  const dir = `/proc/${String(pid)}/task`;
  let mainSeconds = 0;
  let otherSeconds = 0;
  for (const tid of await readdir(dir)) {
    const ticks = await readStatTicks(`${dir}/${tid}/stat`).catch(() => 0);
    if (tid === String(pid)) {
      mainSeconds += ticks / TICKS_PER_SECOND;
    } else {
      otherSeconds += ticks / TICKS_PER_SECOND;
    }
  }
  return { mainSeconds, otherSeconds };
}

/** utime + stime, in clock ticks, of a /proc stat file (a process's or a thread's). */
async function readStatTicks(path: string): Promise<number> {
  const fields = await readStatFields(path);
  return Number(fields[11]) + Number(fields[12]);
}

/**
 * The fields of a /proc stat file after the command name (which may hold spaces): index 0 is
 * field 3 (state), so minflt (field 10) is at 7, utime and stime (14, 15) at 11 and 12.
 */
async function readStatFields(path: string): Promise<string[]> {
  const stat = await readFile(path, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * The TCP ports process `pid` listens on (IPv4 and IPv6), from its socket descriptors matched
 * against /proc/PID/net/tcp{,6}: what the process opened itself, not whatever answers there.
 */
export async function listeningPorts(pid: number): Promise<Set<number>> {
  const proc = `/proc/${String(pid)}`;
  const inodes = new Set<string>();
  for (const fd of await readdir(`${proc}/fd`)) {
    // A descriptor closed since the listing is simply left out.
    const target = await readlink(`${proc}/fd/${fd}`).catch(() => '');
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode !== undefined) {
      inodes.add(inode);
    }
  }
  const ports = new Set<number>();
  for (const table of ['tcp', 'tcp6']) {
    const text = await readFile(`${proc}/net/${table}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      const fields = line.trim().split(/\s+/);
      const port = fields[1]?.split(':')[1];
      // State 0A is LISTEN.
      if (fields[3] === '0A' && port !== undefined && inodes.has(fields[9] ?? '')) {
        ports.add(parseInt(port, 16));
      }
    }
  }
  return ports;
}
