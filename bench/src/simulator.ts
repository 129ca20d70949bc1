#!/usr/bin/env node
/**
 * The control-plane simulator: thousands of virtual agents in a few worker processes speak
 * the real protocol (libs/proto subjects, messages and streams) to a real nats-server (or a
 * three-node JetStream cluster) and the real tracker replicas, for each agent count of a
 * ladder. No piece bytes move: per-agent download and upload rates are simulated by budgets.
 * Prints, per agent count, hand-out latency, messages and bytes per agent per blob, tracker
 * CPU and memory, JetStream storage and consumers, time until every agent holds every blob,
 * and the tracker's replay time after a restart, with ratios to the first rung.
 *
 *   node bench/dist/src/simulator.js [--agents 100,1000,5000,10000] [--blobs 2] [--pieces 256]
 *        [--trackers 2] [--kill-tracker] [--cluster3] [--deadline-s 600] ...
 *
 * Bounded in time: the whole run stops by itself at its deadline, and everything started is
 * torn down on exit, on failure and on Ctrl-C. It reports figures; it never asserts them.
 */
import { STREAMS } from '@shoal/proto';
import { mib, ratio, table } from '@shoal/testkit';

import { exitOnProblems, interruptOnSignal, newTeardown, progress, readOptions } from './cli.js';
import {
  runPhase,
  trackerLatencyBoundS,
  type PhaseOptions,
  type PhaseResult,
} from './sim/phase.js';
import { PUBLISHED_KINDS, RECEIVED_KINDS, totalOf } from './sim/stats.js';

const USAGE = `usage: node bench/dist/src/simulator.js [options]

  --agents LIST          agent counts to run, one fresh cluster each (default 100,1000,5000,10000)
  --blobs N              blobs every agent fetches at once (default 2)
  --pieces N             pieces per blob (default 256)
  --trackers N           tracker replicas (default 2)
  --kill-tracker         SIGKILL one tracker replica mid-run; wants must still all be answered
  --cluster3             a three-node JetStream cluster (R3 streams) instead of one server
  --workers N            worker processes running the virtual agents (default 2)
  --connections N        NATS connections per worker (default 1)
  --download-pps N       pieces/s one agent downloads over all its blobs (default 64)
  --upload-pps N         pieces/s one agent uploads (default 64)
  --seed-pps N           pieces/s the seed uploads to the whole swarm (default 512)
  --want-interval-ms N   want interval of a download (default 500, the agent's)
  --have-interval-ms N   have batching interval (default 200, the agent's)
  --stall-timeout-ms N   no piece for this long: the download reads the rest from the origin
                         (default 10000, the agent's; 0: never)
  --ramp-s S             agents join evenly over this long (default 5)
  --churn F              fraction of agents that leave mid-download and rejoin (default 0.05)
  --no-preheat           leave out each agent's preheat durable consumer and presence entry
  --hashes KIND          how agents read piece hashes: direct (a core subscription and direct
                         gets of the stored batches, no consumer, as the agent does; default)
                         or consumer (one JetStream consumer per download, as agents did
                         before direct gets)
  --pacing KIND          when agents publish wants and haves: paced (wants back off while
                         known holders have pieces to give and wait for the tracker's push
                         after a hand-out naming no holder; haves as the held pieces double;
                         as the agent does; default) or fixed (a want every want interval and
                         a have every have interval for the whole download, as agents did)
  --tracker-env LIST     extra tracker settings, KEY=VALUE,KEY=VALUE (e.g.
                         SHOAL_TRACKER_PUSH_ON_HAVE=false); NODE_OPTIONS too (e.g.
                         NODE_OPTIONS=--max-old-space-size=256), unless --cpu-prof-dir is given
  --cpu-prof-dir DIR     trackers write V8 CPU profiles there when they stop (default: none)
  --tracker-build DIR    run the tracker of another checkout built with tsc -b (e.g. made by
                         services/seedserver/tools/build-at.sh <commit> DIR services/tracker),
                         for a before and after on the same machine
  --phase-timeout-s S    longest one agent count may run (default 150)
  --deadline-s S         hard deadline of the whole run (default 600)
`;

/** A whole number from a flag, checked against its range. */
function intOption(
  values: Readonly<Record<string, string | boolean | undefined>>,
  name: string,
  min: number,
  max: number,
  problems: string[],
): number {
  const value = Number(values[name]);
  if (!Number.isInteger(value) || value < min || value > max) {
    problems.push(`--${name} takes a whole number from ${String(min)} to ${String(max)}`);
  }
  return value;
}

/** `KEY=VALUE,KEY=VALUE` as an environment; a malformed entry is a problem. */
function parseEnvList(list: string, problems: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of list.split(',').filter((e) => e !== '')) {
    const match = /^(SHOAL_TRACKER_[A-Z0-9_]+|NODE_OPTIONS)=(.*)$/.exec(entry);
    if (match?.[1] === undefined || match[2] === undefined) {
      problems.push(
        `--tracker-env takes SHOAL_TRACKER_NAME=value and NODE_OPTIONS=value entries, not ${entry}`,
      );
      continue;
    }
    env[match[1]] = match[2];
  }
  return env;
}

async function main(): Promise<void> {
  const values = readOptions(process.argv.slice(2), USAGE, {
    agents: { type: 'string', default: '100,1000,5000,10000' },
    blobs: { type: 'string', default: '2' },
    pieces: { type: 'string', default: '256' },
    trackers: { type: 'string', default: '2' },
    'kill-tracker': { type: 'boolean', default: false },
    cluster3: { type: 'boolean', default: false },
    workers: { type: 'string', default: '2' },
    connections: { type: 'string', default: '1' },
    'download-pps': { type: 'string', default: '64' },
    'upload-pps': { type: 'string', default: '64' },
    'seed-pps': { type: 'string', default: '512' },
    'want-interval-ms': { type: 'string', default: '500' },
    'have-interval-ms': { type: 'string', default: '200' },
    'stall-timeout-ms': { type: 'string', default: '10000' },
    'ramp-s': { type: 'string', default: '5' },
    churn: { type: 'string', default: '0.05' },
    'no-preheat': { type: 'boolean', default: false },
    hashes: { type: 'string', default: 'direct' },
    pacing: { type: 'string', default: 'paced' },
    'tracker-env': { type: 'string', default: '' },
    'cpu-prof-dir': { type: 'string' },
    'tracker-build': { type: 'string' },
    'phase-timeout-s': { type: 'string', default: '150' },
    'deadline-s': { type: 'string', default: '600' },
  });
  const problems: string[] = [];
  const ladder = String(values.agents)
    .split(',')
    .map((s) => Number(s));
  if (ladder.some((n) => !Number.isInteger(n) || n < 1 || n > 50_000)) {
    problems.push('--agents takes agent counts from 1 to 50000, e.g. 100,1000');
  }
  const churn = Number(values.churn);
  if (!Number.isFinite(churn) || churn < 0 || churn > 1) {
    problems.push('--churn takes a fraction from 0 to 1');
  }
  const base = {
    blobs: intOption(values, 'blobs', 1, 64, problems),
    pieces: intOption(values, 'pieces', 1, 4096, problems),
    trackers: intOption(values, 'trackers', 1, 8, problems),
    killTracker: values['kill-tracker'] === true,
    cluster3: values.cluster3 === true,
    workers: intOption(values, 'workers', 1, 16, problems),
    connections: intOption(values, 'connections', 1, 64, problems),
    downloadPiecesPerS: intOption(values, 'download-pps', 1, 100_000, problems),
    uploadPiecesPerS: intOption(values, 'upload-pps', 1, 100_000, problems),
    seedPiecesPerS: intOption(values, 'seed-pps', 1, 1_000_000, problems),
    wantIntervalMs: intOption(values, 'want-interval-ms', 50, 60_000, problems),
    haveIntervalMs: intOption(values, 'have-interval-ms', 20, 60_000, problems),
    stallTimeoutMs: intOption(values, 'stall-timeout-ms', 0, 3_600_000, problems),
    rampMs: intOption(values, 'ramp-s', 0, 600, problems) * 1000,
    churn,
    preheat: values['no-preheat'] !== true,
    hashReads: values.hashes === 'direct' ? ('direct' as const) : ('consumer' as const),
    pacing: values.pacing === 'fixed' ? ('fixed' as const) : ('paced' as const),
    trackerEnv: parseEnvList(String(values['tracker-env']), problems),
    cpuProfDir: typeof values['cpu-prof-dir'] === 'string' ? values['cpu-prof-dir'] : undefined,
    trackerBuildRoot:
      typeof values['tracker-build'] === 'string' ? values['tracker-build'] : undefined,
  };
  if (values.hashes !== 'consumer' && values.hashes !== 'direct') {
    problems.push('--hashes takes consumer or direct');
  }
  if (values.pacing !== 'paced' && values.pacing !== 'fixed') {
    problems.push('--pacing takes paced or fixed');
  }
  const phaseTimeoutMs = intOption(values, 'phase-timeout-s', 10, 3600, problems) * 1000;
  const deadlineMs = intOption(values, 'deadline-s', 10, 24 * 3600, problems) * 1000;
  if (base.killTracker && base.trackers < 2) {
    problems.push('--kill-tracker needs --trackers 2 or more');
  }
  exitOnProblems(problems, USAGE);

  const deadlineAt = Date.now() + deadlineMs;
  const interrupt = interruptOnSignal();
  // The hard deadline: past it the run is interrupted like a Ctrl-C, and tears down.
  const overall = new AbortController();
  const timer = setTimeout(() => overall.abort(new Error('deadline')), deadlineMs);
  const signal = AbortSignal.any([interrupt.signal, overall.signal]);
  const results: PhaseResult[] = [];
  let failure: Error | undefined;
  try {
    for (const agents of ladder) {
      if (signal.aborted || deadlineAt - Date.now() < 30_000) {
        progress(`${String(agents)} agents: skipped, the deadline is too close`);
        continue;
      }
      const teardown = newTeardown();
      const options: PhaseOptions = {
        ...base,
        agents,
        deadlineAt: Math.min(deadlineAt, Date.now() + phaseTimeoutMs),
        signal,
      };
      try {
        const result = await runPhase(options, teardown);
        results.push(result);
        process.stdout.write(`${phaseSummary(result)}\n`);
      } catch (error) {
        failure = error instanceof Error ? error : new Error(String(error));
        progress(`${String(agents)} agents: ${failure.message}`);
      } finally {
        await teardown.run();
      }
      if (failure !== undefined) {
        break;
      }
    }
  } finally {
    clearTimeout(timer);
    interrupt.release();
  }
  if (results.length > 0) {
    process.stdout.write(`\n${report(results, base)}\n`);
  }
  if (failure !== undefined || signal.aborted) {
    process.exitCode = 1;
  }
}

/** Agent-blob downloads of a phase: the unit the per-agent figures are divided by. */
function agentBlobs(r: PhaseResult): number {
  return r.agents * r.blobs;
}

/** A replica's figure, or 0 when it could not be read (a killed replica's). */
function finite(value: number): number {
  return Number.isFinite(value) ? value : 0;
}

function fixed(value: number, digits = 1): string {
  return Number.isFinite(value) ? value.toFixed(digits) : '-';
}

function kib(bytes: number): string {
  return Number.isFinite(bytes) ? `${(bytes / 1024).toFixed(1)} KiB` : '-';
}

/** One line per phase as it ends, so a run cut short still shows what it measured. */
function phaseSummary(r: PhaseResult): string {
  const lost = r.unanswered;
  return (
    `[sim] ${String(r.agents)} agents: ${String(r.completed)}/${String(r.started)} downloads done` +
    `${r.finished ? '' : ' (deadline reached first)'}, ${String(r.wants)} wants, ${String(lost)} unanswered, ` +
    `${String(r.extraHandouts)} hand-outs with no want waiting, churned ${String(r.churned)}` +
    (Object.keys(r.errors).length > 0 ? `, errors ${JSON.stringify(r.errors)}` : '')
  );
}

/** The per-agent-count table, then each row's ratio to the first agent count. */
function report(
  results: readonly PhaseResult[],
  base: Omit<PhaseOptions, 'agents' | 'deadlineAt' | 'signal'>,
): string {
  const perAgentBlob = (r: PhaseResult, value: number): number => value / agentBlobs(r);
  const pub = (r: PhaseResult): number => perAgentBlob(r, totalOf(r.published).msgs);
  const rec = (r: PhaseResult): number => perAgentBlob(r, totalOf(r.received).msgs);
  const trackerCpu = (r: PhaseResult): number => r.trackers.reduce((s, t) => s + t.cpuS, 0);
  const handouts = (r: PhaseResult): number =>
    r.trackers.reduce((s, t) => s + (Number.isFinite(t.handouts) ? t.handouts : 0), 0);
  const peakRss = (r: PhaseResult): number =>
    Math.max(...r.trackers.map((t) => (Number.isFinite(t.peakRssBytes) ? t.peakRssBytes : 0)));
  type Row = readonly [
    label: string,
    value: (r: PhaseResult) => number,
    show: (v: number) => string,
  ];
  const rows: Row[] = [
    ['hand-out p50 (ms)', (r) => r.latencyP50Ms, (v) => fixed(v, 0)],
    ['hand-out p99 (ms)', (r) => r.latencyP99Ms, (v) => fixed(v, 0)],
    ['hand-out max (ms)', (r) => r.latencyMaxMs, (v) => fixed(v, 0)],
    [
      '  in the trackers, mean (ms)',
      (r) =>
        (1000 * r.trackers.reduce((s, t) => s + finite(t.handoutLatencySumS), 0)) /
        r.trackers.reduce((s, t) => s + finite(t.handoutLatencyCount), 0),
      (v) => fixed(v, 0),
    ],
    [
      '  in the trackers, p99 within (ms)',
      (r) => 1000 * trackerLatencyBoundS(r.trackers, 0.99),
      // The bounds run 1, 2.5, 5, 10, 25 … ms.
      (v) => (v === Number.POSITIVE_INFINITY ? '> 10000' : fixed(v, v < 10 ? 1 : 0)),
    ],
    ['wants per agent per blob', (r) => perAgentBlob(r, r.wants), (v) => fixed(v)],
    [
      'wants coalesced in the trackers (%)',
      (r) => (100 * r.trackers.reduce((s, t) => s + finite(t.coalesced), 0)) / r.wants,
      (v) => fixed(v, 1),
    ],
    ['msgs published / agent / blob', pub, (v) => fixed(v)],
    ...PUBLISHED_KINDS.map((kind): Row => [
      `  ${kind}`,
      (r) => perAgentBlob(r, r.published[kind]?.msgs ?? 0),
      (v) => fixed(v),
    ]),
    ['msgs received / agent / blob', rec, (v) => fixed(v)],
    ...RECEIVED_KINDS.map((kind): Row => [
      `  ${kind === 'handout' ? 'hand-outs' : kind}`,
      (r) => perAgentBlob(r, r.received[kind]?.msgs ?? 0),
      (v) => fixed(v),
    ]),
    [
      'payload bytes published / agent / blob',
      (r) => perAgentBlob(r, totalOf(r.published).bytes),
      kib,
    ],
    [
      'payload bytes received / agent / blob',
      (r) => perAgentBlob(r, totalOf(r.received).bytes),
      kib,
    ],
    [
      'server: msgs from agents / agent / blob',
      (r) => perAgentBlob(r, r.connz.sent),
      (v) => fixed(v),
    ],
    [
      'server: msgs to agents / agent / blob',
      (r) => perAgentBlob(r, r.connz.received),
      (v) => fixed(v),
    ],
    ['server: bytes from agents / agent / blob', (r) => perAgentBlob(r, r.connz.sentBytes), kib],
    ['server: bytes to agents / agent / blob', (r) => perAgentBlob(r, r.connz.receivedBytes), kib],
    [
      'server: all msgs in+out / agent / blob',
      (r) => perAgentBlob(r, r.varz.inMsgs + r.varz.outMsgs),
      (v) => fixed(v),
    ],
    ['  agents in+out', (r) => perAgentBlob(r, r.connz.sent + r.connz.received), (v) => fixed(v)],
    [
      '  trackers in (hand-outs, acks, pulls)',
      (r) => perAgentBlob(r, r.trackerConnz.sent),
      (v) => fixed(v),
    ],
    [
      '  trackers out (haves, wants delivered)',
      (r) => perAgentBlob(r, r.trackerConnz.received),
      (v) => fixed(v),
    ],
    [
      '  the rest (JetStream, virtual seed)',
      (r) =>
        perAgentBlob(
          r,
          r.varz.inMsgs +
            r.varz.outMsgs -
            r.connz.sent -
            r.connz.received -
            r.trackerConnz.sent -
            r.trackerConnz.received,
        ),
      (v) => fixed(v),
    ],
    ['tracker CPU, all replicas (s)', trackerCpu, (v) => fixed(v, 2)],
    ['nats-server CPU (s)', (r) => r.natsCpuS, (v) => fixed(v, 2)],
    ['simulator workers CPU (s)', (r) => r.workersCpuS, (v) => fixed(v, 2)],
    ['  round every, mean (ms; 100 planned)', (r) => r.tickGapMs, (v) => fixed(v, 0)],
    [
      'swarm size per want answered (mean)',
      (r) =>
        r.trackers.reduce((s, t) => s + t.swarmSizeSum, 0) /
        r.trackers.reduce((s, t) => s + t.swarmSizeCount, 0),
      (v) => fixed(v, 0),
    ],
    [
      'tracker CPU per hand-out (ms)',
      (r) => (1000 * trackerCpu(r)) / handouts(r),
      (v) => fixed(v, 3),
    ],
    ['tracker peak RSS, largest (MiB)', (r) => peakRss(r) / 1024 / 1024, (v) => fixed(v)],
    ['JetStream stored bytes (MiB)', (r) => r.jetStream.bytes / 1024 / 1024, (v) => fixed(v, 2)],
    ['JetStream stored msgs', (r) => r.jetStream.messages, (v) => fixed(v, 0)],
    ['JetStream consumers, peak', (r) => r.peakConsumers, (v) => fixed(v, 0)],
    ['  on SHOAL_PIECES, peak', (r) => r.peakPieceConsumers, (v) => fixed(v, 0)],
    [
      'downloads falling back to the origin (%)',
      (r) => (100 * r.fallbacks) / r.started,
      (v) => fixed(v, 1),
    ],
    [
      'pieces read from the origin (%)',
      (r) => (100 * r.originPieces) / (r.started * base.pieces),
      (v) => fixed(v, 1),
    ],
    ['download p50 (s)', (r) => r.downloadP50S, (v) => fixed(v, 2)],
    ['download p99 (s)', (r) => r.downloadP99S, (v) => fixed(v, 2)],
    [
      'every agent holds every blob (s)',
      (r) => (r.finished ? r.allDoneS : Number.NaN),
      (v) => fixed(v, 2),
    ],
    ['tracker restart to ready (s)', (r) => r.replay.readyS, (v) => fixed(v, 2)],
    ['  replay of SHOAL_SWARM (s)', (r) => r.replay.replayS, (v) => fixed(v, 2)],
    ['  messages replayed', (r) => r.replay.messages, (v) => fixed(v, 0)],
    ['  stream last seq at start', (r) => r.replay.startLastSeq, (v) => fixed(v, 0)],
    ['  last seq applied when caught up', (r) => r.replay.caughtUpSeq, (v) => fixed(v, 0)],
    ['  peak RSS after replay (MiB)', (r) => r.replay.peakRssBytes / 1024 / 1024, (v) => fixed(v)],
  ];
  const header = ['agents', ...results.map((r) => String(r.agents))];
  const first = results[0];
  const values = table(
    header,
    rows.map(([label, value, show]) => [label, ...results.map((r) => show(value(r)))]),
  );
  const ratios =
    first === undefined || results.length < 2
      ? ''
      : `\nratio to ${String(first.agents)} agents (1.00 = flat)\n${table(
          header,
          rows
            .filter(([label]) => !label.startsWith('tracker restart'))
            .map(([label, value]) => [
              label,
              ...results.map((r) => ratio(value(r) / value(first))),
            ]),
        )}`;
  const shares = results
    .map(
      (r) =>
        `${String(r.agents)}: ${r.trackers
          .map(
            (t, i) =>
              `replica ${String(i)}${t.killed ? ' (killed)' : ''} ${fixed(t.handouts, 0)} hand-outs, ${fixed(t.coalesced, 0)} wants coalesced, ${fixed(t.wantsForwarded, 0)} forwarded (${fixed(t.forwardsUnanswered, 0)} unanswered), ${fixed(t.shardChanges, 0)} changes of the replica set, ${fixed(t.haves, 0)} haves applied, ${fixed(t.havesSkipped, 0)} skipped, ${fixed(t.cpuS, 2)} s CPU, ${t.killed ? '-' : mib(t.peakRssBytes)}`,
          )
          .join('; ')}`,
    )
    .join('\n');
  const wants = results
    .map(
      (r) =>
        `${String(r.agents)}: ${String(r.wants)} wants, ${String(r.unanswered)} unanswered at the end ` +
        `(${String(r.queuedWants)} of them still queued in ${STREAMS.wants.name}, ` +
        `${String(Math.max(0, r.unanswered - r.queuedWants))} lost), ${String(r.answeredTogether)} answered by a hand-out that also answered an earlier want, ` +
        `${String(r.extraHandouts)} hand-outs with no want waiting, ` +
        `${String(r.wantPublishFailures)} not acknowledged by JetStream`,
    )
    .join('\n');
  return [
    `Shoal control-plane simulator: ${String(base.blobs)} blobs x ${String(base.pieces)} pieces, ` +
      `${String(base.trackers)} tracker replicas${base.killTracker ? ' (one killed mid-run)' : ''}, ` +
      `${base.cluster3 ? 'three-node JetStream cluster (R3)' : 'one nats-server (R1)'}, ` +
      (base.trackerBuildRoot === undefined ? '' : `trackers of ${base.trackerBuildRoot}, `) +
      `${String(base.workers)} worker processes x ${String(base.connections)} NATS connection(s)`,
    `agent: download ${String(base.downloadPiecesPerS)} pieces/s, upload ${String(base.uploadPiecesPerS)} pieces/s; ` +
      `seed ${String(base.seedPiecesPerS)} pieces/s; want every ${String(base.wantIntervalMs)} ms, ` +
      `haves every ${String(base.haveIntervalMs)} ms, ${base.pacing}; ` +
      `${Object.entries(base.trackerEnv)
        .map(([k, v]) => `${k}=${v}; `)
        .join('')}join over ${String(base.rampMs / 1000)} s; churn ${String(base.churn)}; ` +
      `preheat consumers ${base.preheat ? 'on' : 'off'}`,
    '',
    values,
    ratios,
    '',
    'tracker replicas (hand-outs, CPU over the run, peak RSS)',
    shares,
    '',
    'wants',
    wants,
  ].join('\n');
}

await main();
