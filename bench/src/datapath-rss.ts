/**
 * The data-path benchmark's memory row: four clients stream one large blob through a fresh
 * agent at once, cold (the agent fetches it from the seed server while they read), and the
 * agent's resident set is watched the whole time. The goal is a peak under 100 MiB
 * for a 4 GiB blob, whatever the blob size: memory must be bounded by the pieces in flight.
 *
 * The resident set comes from /proc/PID/status (VmRSS sampled, VmHWM at the end); what it is
 * made of from the agent's own /metrics (prom-client's default process metrics): the V8 heap
 * in use and reserved, and the external memory (Buffers and other memory V8 does not own).
 */
import { readFile } from 'node:fs/promises';

import {
  mib,
  procCostBetween,
  readProcCost,
  scrapeMetrics,
  seconds,
  table,
  type AgentProcess,
  type Descriptor,
  type ProcCost,
} from '@shoal/testkit';

import { pullBlob, type PullTarget } from './clients.js';

const GiB = 1024 * 1024 * 1024;
/**
 * How often the agent's resident set and /metrics are read during the pull, in ms: about as
 * often as Prometheus would, since rendering /metrics allocates on the agent's heap too.
 */
const SAMPLE_MS = 1000;

/** The agent's memory at one moment, in bytes. */
interface MemorySample {
  readonly rss: number;
  /** V8 heap in use, and reserved (all spaces). */
  readonly heapUsed: number;
  readonly heapTotal: number;
  /** Reserved for the young generation (the semi-spaces). */
  readonly newSpace: number;
  /** Memory V8 does not own: Buffers and other array buffers, mostly. */
  readonly external: number;
}

/** What the memory row measured. */
export interface RssRun {
  readonly clients: number;
  readonly blobBytes: number;
  readonly seconds: number;
  /** The agent's and the seed server's cost during the pull. */
  readonly agent: ProcCost;
  readonly seed: ProcCost;
  /** The agent once up, before the pull. */
  readonly idle: MemorySample;
  /** VmHWM at the end: the largest resident set the agent ever had, in bytes. */
  readonly peakRss: number;
  /** The sample with the largest resident set during the pull. */
  readonly atPeak: MemorySample;
  /** The largest of each figure over the samples. */
  readonly largest: MemorySample;
}

/** The process's resident set now (VmRSS of /proc/PID/status), in bytes. */
async function residentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${String(pid)}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (match?.[1] === undefined) {
    throw new Error(`no VmRSS in /proc/${String(pid)}/status`);
  }
  return Number(match[1]) * 1024;
}

/** The agent's resident set and, from its /metrics, what V8 says of its memory. */
async function sample(agent: AgentProcess, pid: number): Promise<MemorySample> {
  const metrics = await scrapeMetrics(agent.url);
  return {
    rss: await residentBytes(pid),
    heapUsed: metrics.get('nodejs_heap_size_used_bytes'),
    heapTotal: metrics.get('nodejs_heap_size_total_bytes'),
    newSpace: metrics.get('nodejs_heap_space_size_total_bytes', { space: 'new' }),
    external: metrics.get('nodejs_external_memory_bytes'),
  };
}

/**
 * `clients` concurrent GETs of `blob` through `agent` (fresh, so its VmHWM is this pull's),
 * each hashed as it streams and checked; the seed server (`seedPid`) is charged too.
 */
export async function measureRss(
  agent: AgentProcess,
  agentPid: number,
  seedPid: number,
  target: PullTarget,
  blob: Descriptor,
  clients: number,
  signal: AbortSignal,
): Promise<RssRun> {
  const idle = await sample(agent, agentPid);
  let atPeak = idle;
  let largest = idle;
  const stop = new AbortController();
  const sampling = (async () => {
    while (!stop.signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, SAMPLE_MS));
      const now = await sample(agent, agentPid).catch(() => undefined);
      if (now === undefined) {
        return;
      }
      if (now.rss > atPeak.rss) {
        atPeak = now;
      }
      largest = {
        rss: Math.max(largest.rss, now.rss),
        heapUsed: Math.max(largest.heapUsed, now.heapUsed),
        heapTotal: Math.max(largest.heapTotal, now.heapTotal),
        newSpace: Math.max(largest.newSpace, now.newSpace),
        external: Math.max(largest.external, now.external),
      };
    }
  })();
  const agentBefore = await readProcCost(agentPid);
  const seedBefore = await readProcCost(seedPid);
  const started = performance.now();
  try {
    await Promise.all(
      Array.from({ length: clients }, () => pullBlob(agent.url, target, blob, signal)),
    );
  } finally {
    stop.abort();
    await sampling;
  }
  const elapsed = (performance.now() - started) / 1000;
  return {
    clients,
    blobBytes: blob.size,
    seconds: elapsed,
    agent: procCostBetween(agentBefore, await readProcCost(agentPid)),
    seed: procCostBetween(seedBefore, await readProcCost(seedPid)),
    idle,
    peakRss: await agent.peakRssBytes(),
    atPeak,
    largest,
  };
}

/** The memory row's lines for the report. */
export function rssReport(run: RssRun): string[] {
  const delivered = run.blobBytes * run.clients;
  const perGiB = (cost: ProcCost, bytes: number): string =>
    (cost.cpuSeconds / (bytes / GiB)).toFixed(2);
  const row = (label: string, m: MemorySample): string[] => [
    label,
    mib(m.rss),
    mib(m.heapUsed),
    mib(m.heapTotal),
    mib(m.newSpace),
    mib(m.external),
  ];
  return [
    `memory: ${run.clients} clients stream one ${mib(run.blobBytes)} blob through a fresh agent at once, cold (agent <- seed server)`,
    `${seconds(run.seconds)}, ${(delivered / 1e6 / run.seconds).toFixed(0)} MB/s delivered in all; ` +
      `agent ${perGiB(run.agent, run.blobBytes)} CPU s/GiB fetched ` +
      `(${perGiB(run.agent, delivered)} per GiB delivered), ` +
      `seed server ${perGiB(run.seed, run.blobBytes)} CPU s/GiB`,
    table(
      ['agent memory', 'RSS', 'V8 heap used', 'V8 heap reserved', 'of it new space', 'external'],
      [
        row('idle, before the pull', run.idle),
        row('at the largest RSS sampled', run.atPeak),
        row('largest of each, sampled', run.largest),
      ],
    ),
    `agent peak RSS (VmHWM) with ${run.clients} clients on ${mib(run.blobBytes)}: ${mib(run.peakRss)}`,
  ];
}
