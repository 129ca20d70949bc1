/**
 * Where the simulator's server-side figures come from: /proc for the trackers' CPU and peak
 * memory, nats-server's monitoring port for message totals, and the JetStream API for storage
 * and consumers.
 */
import { readFile } from 'node:fs/promises';

import type { JetStreamManager } from '@nats-io/jetstream';

/** Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`; 100 on Linux). */
const CLOCK_TICKS_PER_S = 100;
const TIMEOUT_MS = 30_000;

/** User plus system CPU time of a process so far, in seconds; NaN when it is gone. */
export async function cpuSeconds(pid: number | undefined): Promise<number> {
  if (pid === undefined) {
    return Number.NaN;
  }
  try {
    const stat = await readFile(`/proc/${String(pid)}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / CLOCK_TICKS_PER_S;
  } catch {
    return Number.NaN;
  }
}

/** Peak resident set size (VmHWM) of a process, in bytes; NaN when it is gone. */
export async function peakRssBytes(pid: number | undefined): Promise<number> {
  if (pid === undefined) {
    return Number.NaN;
  }
  try {
    const status = await readFile(`/proc/${String(pid)}/status`, 'utf8');
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
    return match?.[1] === undefined ? Number.NaN : Number(match[1]) * 1024;
  } catch {
    return Number.NaN;
  }
}

async function monitor<T>(base: string, path: string): Promise<T> {
  const response = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(TIMEOUT_MS) });
  if (!response.ok) {
    throw new Error(`${base}${path}: HTTP ${String(response.status)}`);
  }
  return (await response.json()) as T;
}

/** Message and byte totals of a set of servers (/varz), summed. */
export interface ServerTotals {
  inMsgs: number;
  outMsgs: number;
  inBytes: number;
  outBytes: number;
}

export async function varzTotals(monitorUrls: readonly string[]): Promise<ServerTotals> {
  const total: ServerTotals = { inMsgs: 0, outMsgs: 0, inBytes: 0, outBytes: 0 };
  for (const base of monitorUrls) {
    const varz = await monitor<{
      in_msgs: number;
      out_msgs: number;
      in_bytes: number;
      out_bytes: number;
    }>(base, '/varz');
    total.inMsgs += varz.in_msgs;
    total.outMsgs += varz.out_msgs;
    total.inBytes += varz.in_bytes;
    total.outBytes += varz.out_bytes;
  }
  return total;
}

/**
 * What the servers counted for the connections whose name starts with `prefix` (/connz), seen
 * from the client: `sent` is what the clients published, `received` what they were sent.
 */
export async function connzTotals(
  monitorUrls: readonly string[],
  prefix: string,
): Promise<{
  connections: number;
  sent: ServerTotals['inMsgs'];
  sentBytes: number;
  received: number;
  receivedBytes: number;
}> {
  const total = { connections: 0, sent: 0, sentBytes: 0, received: 0, receivedBytes: 0 };
  for (const base of monitorUrls) {
    const connz = await monitor<{
      connections?: {
        name?: string;
        in_msgs: number;
        out_msgs: number;
        in_bytes: number;
        out_bytes: number;
      }[];
    }>(base, '/connz?state=all&limit=100000');
    for (const conn of connz.connections ?? []) {
      if (conn.name?.startsWith(prefix) === true) {
        total.connections += 1;
        total.sent += conn.in_msgs;
        total.sentBytes += conn.in_bytes;
        total.received += conn.out_msgs;
        total.receivedBytes += conn.out_bytes;
      }
    }
  }
  return total;
}

/** JetStream's state over every stream, from the API (the cluster's view with replicas). */
export interface JetStreamState {
  /** Bytes stored, summed over streams (one copy; R3 keeps three). */
  bytes: number;
  messages: number;
  consumers: number;
  /** Per stream: messages, bytes, consumers. */
  streams: Record<string, { messages: number; bytes: number; consumers: number }>;
}

export async function jetStreamState(jsm: JetStreamManager): Promise<JetStreamState> {
  const state: JetStreamState = { bytes: 0, messages: 0, consumers: 0, streams: {} };
  for await (const info of jsm.streams.list()) {
    state.bytes += info.state.bytes;
    state.messages += info.state.messages;
    state.consumers += info.state.consumer_count;
    state.streams[info.config.name] = {
      messages: info.state.messages,
      bytes: info.state.bytes,
      consumers: info.state.consumer_count,
    };
  }
  return state;
}

/** Consumers the servers report (/jsz), the largest over servers (each reports the account's). */
export async function jszConsumers(monitorUrls: readonly string[]): Promise<number> {
  let most = 0;
  for (const base of monitorUrls) {
    const jsz = await monitor<{ consumers?: number }>(base, '/jsz');
    most = Math.max(most, jsz.consumers ?? 0);
  }
  return most;
}
