#!/usr/bin/env node
/**
 * The shaped-network benchmark: a cluster built of network namespaces on this machine, every
 * link rate-limited with tc on both ends, and one generated image pulled with `ctr images
 * pull` on every node at once, in three waves of the same run: (a) straight from the registry,
 * (b) through a pull-through cache, (c) through Shoal. For each wave it prints the time until
 * every node is done, the median node, registry bytes ÷ image bytes, the ideal lower bound and
 * the ratios to it, and for Shoal the CPU seconds of its processes.
 *
 *   npm run shaped -w bench -- [--nodes 4] [--node-mbit 25] [--size-mib 64] ...   (as root)
 *
 * It reports figures; it never asserts a time. It exits 1 when a pull fails.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import {
  generateImage,
  makeTempDir,
  mib,
  pushImage,
  ratio,
  seconds,
  startFaultProxy,
  startRegistry,
  table,
  type GeneratedImage,
} from '@shoal/testkit';

import {
  cpuProfileEnv,
  exitOnProblems,
  interruptOnSignal,
  newTeardown,
  progress,
  readOptions,
  runBench,
} from './cli.js';
import { NetLab, type LabHost, type LinkShape } from '@shoal/testkit';
import {
  cacheWave,
  directWave,
  shoalWave,
  type LabNode,
  type WaveContext,
  type WaveResult,
} from './net/waves.js';
import { machineBusy, nodeTimeline, seedTimeline } from './net/sampler.js';
import { boundWithin, type HistogramFigures } from './histogram.js';

const MiB = 1024 * 1024;
const REPOSITORY = 'bench/shaped';
const WAVES = ['direct', 'cache', 'shoal', 'baseline'] as const;
type WaveName = (typeof WAVES)[number];

const USAGE = `usage: npm run shaped -w bench -- [options]    (as root: it builds network namespaces)

  --nodes N            nodes pulling at once, each with containerd and an agent (default 4)
  --node-mbit R        each node's link, megabits/s each way (default 25)
  --registry-mbit R    the registry's link (default: --node-mbit)
  --registry-answer-ms MS
                       the registry answers every GET MS after it was asked, as one that fetches
                       blobs from its own storage or upstream first (a proxy on the bench's own
                       address, in front of it, for every wave; HEADs at once; default 0: none)
  --cache-mbit R       the pull-through cache's link (default: --registry-mbit)
  --control-mbit R     the link of NATS, the tracker and the seed server (default: --node-mbit)
  --delay-ms D         one-way delay on every link end (needs netem in the kernel; default 0)
  --loss-pct P         packet loss on every link end, in percent (needs netem; default 0)
  --layers L           layers of the generated image (default 3; sizes halve layer by layer)
  --layer-mib LIST     the layers' sizes in MiB instead, comma-separated (e.g. 60,2,35,8):
                       an image of many layers as real ones are; --layers and --size-mib unused
  --size-mib S         the image's size, all layers together, in MiB (default 64)
  --slow-nodes K       K nodes at a quarter of --node-mbit (default 0)
  --late-join S        the last node starts pulling S seconds after the others (default 0)
  --waves LIST         which waves, in order (default direct,cache,shoal)
  --shoal-env LIST     settings for the agents and the seed server, KEY=VALUE,KEY=VALUE
  --agent-build DIR    the wave 'baseline' is the Shoal wave with the agents of the build at DIR
                       (services/seedserver/tools/build-at.sh <commit> DIR .)
  --baseline-seed      the baseline wave runs DIR's seed server too (for a change of its own)
  --cpu-prof-dir DIR   the agents write V8 CPU profiles (<pid>.cpuprofile) there when they stop
  --timeout-s S        longest a node's pull may take (default 600)
  --warm-seed          the seed server takes the image in from the registry before the Shoal
                       waves' nodes pull (a preheated cluster): their time is the swarm's
                       alone; the ideal is then image ÷ min(node link, seed's link)
  --timeline FILE      write every Shoal wave's per-second counters (per node: bytes from the
                       seed, peers and origin, uploaded, turned away, failed; the seed's bytes
                       sent; the machine's busy CPU) to FILE as JSON

The issue's configuration: --nodes 6 --size-mib 256 (about 15 minutes at 25 Mbit/s).
`;

interface Options {
  readonly nodes: number;
  readonly nodeMbit: number;
  readonly registryMbit: number;
  readonly registryAnswerMs: number;
  readonly cacheMbit: number;
  readonly controlMbit: number;
  readonly delayMs: number;
  readonly lossPct: number;
  readonly layerSizes: readonly number[];
  readonly slowNodes: number;
  readonly lateJoinS: number;
  readonly waves: readonly WaveName[];
  readonly shoalEnv: Readonly<Record<string, string>>;
  readonly agentBuild: string | undefined;
  readonly baselineSeed: boolean;
  readonly cpuProfDir: string | undefined;
  readonly timeoutMs: number;
  readonly timelineFile: string | undefined;
  readonly warmSeed: boolean;
}

/** Layer sizes that halve from one layer to the next and add up to `totalBytes`. */
function halvingLayers(count: number, totalBytes: number): number[] {
  const weights = Array.from({ length: count }, (_, i) => 2 ** (count - 1 - i));
  const sum = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => Math.max(4096, Math.round((totalBytes * w) / sum)));
}

function parseOptions(argv: readonly string[]): Options {
  const values = readOptions(argv, USAGE, {
    nodes: { type: 'string', default: '4' },
    'node-mbit': { type: 'string', default: '25' },
    'registry-mbit': { type: 'string' },
    'registry-answer-ms': { type: 'string', default: '0' },
    'cache-mbit': { type: 'string' },
    'control-mbit': { type: 'string' },
    'delay-ms': { type: 'string', default: '0' },
    'loss-pct': { type: 'string', default: '0' },
    layers: { type: 'string', default: '3' },
    'layer-mib': { type: 'string' },
    'size-mib': { type: 'string', default: '64' },
    'slow-nodes': { type: 'string', default: '0' },
    'late-join': { type: 'string', default: '0' },
    waves: { type: 'string', default: 'direct,cache,shoal' },
    'shoal-env': { type: 'string', default: '' },
    'agent-build': { type: 'string' },
    'baseline-seed': { type: 'boolean', default: false },
    'cpu-prof-dir': { type: 'string' },
    'timeout-s': { type: 'string', default: '600' },
    timeline: { type: 'string' },
    'warm-seed': { type: 'boolean', default: false },
  });
  const problems: string[] = [];
  const number = (name: string, fallback?: string): number =>
    Number(values[name] ?? (fallback === undefined ? undefined : values[fallback]));
  const check = (ok: boolean, problem: string): void => {
    if (!ok) {
      problems.push(problem);
    }
  };
  const nodes = number('nodes');
  check(Number.isInteger(nodes) && nodes >= 1 && nodes <= 32, '--nodes takes 1 to 32');
  const nodeMbit = number('node-mbit');
  const registryMbit = values['registry-mbit'] === undefined ? nodeMbit : number('registry-mbit');
  const cacheMbit = values['cache-mbit'] === undefined ? registryMbit : number('cache-mbit');
  const controlMbit = values['control-mbit'] === undefined ? nodeMbit : number('control-mbit');
  for (const [name, value] of Object.entries({ nodeMbit, registryMbit, cacheMbit, controlMbit })) {
    check(Number.isFinite(value) && value > 0 && value <= 10_000, `${name}: a rate in Mbit/s`);
  }
  const registryAnswerMs = number('registry-answer-ms');
  check(
    Number.isInteger(registryAnswerMs) && registryAnswerMs >= 0,
    '--registry-answer-ms takes a delay in ms',
  );
  const delayMs = number('delay-ms');
  const lossPct = number('loss-pct');
  check(Number.isFinite(delayMs) && delayMs >= 0, '--delay-ms takes a delay in ms');
  check(Number.isFinite(lossPct) && lossPct >= 0 && lossPct < 100, '--loss-pct takes 0 to 99');
  const layers = number('layers');
  const sizeMib = number('size-mib');
  check(Number.isInteger(layers) && layers >= 1 && layers <= 16, '--layers takes 1 to 16');
  check(Number.isFinite(sizeMib) && sizeMib > 0, '--size-mib takes a size in MiB');
  const layerMib = String(values['layer-mib'] ?? '')
    .split(',')
    .filter((m) => m !== '')
    .map(Number);
  check(
    layerMib.length <= 16 && layerMib.every((m) => Number.isFinite(m) && m > 0),
    '--layer-mib takes up to 16 sizes in MiB, comma-separated',
  );
  const slowNodes = number('slow-nodes');
  check(
    Number.isInteger(slowNodes) && slowNodes >= 0 && slowNodes < nodes,
    '--slow-nodes takes 0 to --nodes - 1',
  );
  const lateJoinS = number('late-join');
  check(Number.isFinite(lateJoinS) && lateJoinS >= 0, '--late-join takes seconds');
  const waves = String(values.waves)
    .split(',')
    .filter((w) => w !== '');
  check(
    waves.length > 0 && waves.every((w) => (WAVES as readonly string[]).includes(w)),
    `--waves takes some of ${WAVES.join(',')}`,
  );
  const shoalEnv: Record<string, string> = {};
  for (const pair of String(values['shoal-env'])
    .split(',')
    .filter((p) => p !== '')) {
    const at = pair.indexOf('=');
    check(at > 0 && /^SHOAL_[A-Z0-9_]+$/.test(pair.slice(0, at)), `--shoal-env: bad ${pair}`);
    shoalEnv[pair.slice(0, at)] = pair.slice(at + 1);
  }
  const agentBuild = values['agent-build'];
  check(
    !waves.includes('baseline') || typeof agentBuild === 'string',
    'the baseline wave needs --agent-build DIR',
  );
  const cpuProfDir = values['cpu-prof-dir'];
  const timeoutS = number('timeout-s');
  check(Number.isFinite(timeoutS) && timeoutS > 0, '--timeout-s takes seconds');
  exitOnProblems(problems, USAGE);
  return {
    nodes,
    nodeMbit,
    registryMbit,
    registryAnswerMs,
    cacheMbit,
    controlMbit,
    delayMs,
    lossPct,
    layerSizes:
      layerMib.length > 0
        ? layerMib.map((m) => Math.max(4096, Math.round(m * MiB)))
        : halvingLayers(layers, sizeMib * MiB),
    slowNodes,
    lateJoinS,
    waves: waves as WaveName[],
    shoalEnv,
    agentBuild: typeof agentBuild === 'string' ? agentBuild : undefined,
    baselineSeed: values['baseline-seed'] === true,
    cpuProfDir: typeof cpuProfDir === 'string' ? cpuProfDir : undefined,
    timeoutMs: timeoutS * 1000,
    timelineFile: typeof values.timeline === 'string' ? values.timeline : undefined,
    warmSeed: values['warm-seed'] === true,
  };
}

/** Bytes per second of a link of `mbit`. */
const bytesPerSecond = (mbit: number): number => (mbit * 1_000_000) / 8;

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[mid] ?? Number.NaN)
    : ((sorted[mid - 1] ?? Number.NaN) + (sorted[mid] ?? Number.NaN)) / 2;
}

/**
 * Lower bounds on the time until every node is done, in seconds, for `imageBytes` on the
 * lab's links: no client can beat its own link or the links its bytes must cross.
 */
function idealSeconds(
  wave: WaveName,
  options: Options,
  imageBytes: number,
  nodeMbit: number,
): number {
  const node = bytesPerSecond(nodeMbit);
  const registry = bytesPerSecond(options.registryMbit);
  const n = options.nodes;
  switch (wave) {
    case 'direct':
      // The registry's link carries the image once per node.
      return Math.max((n * imageBytes) / registry, imageBytes / node);
    case 'cache':
      // Once over the registry's link, once per node over the cache's.
      return Math.max(
        imageBytes / Math.min(registry, node),
        (n * imageBytes) / bytesPerSecond(options.cacheMbit),
      );
    case 'shoal':
    case 'baseline':
      // A perfect swarm: every byte crosses the registry's link once and each node's once;
      // a preheated seed has crossed the registry's already, and crosses its own once.
      return (
        imageBytes /
        Math.min(node, options.warmSeed ? node : registry, bytesPerSecond(options.controlMbit))
      );
  }
}

/**
 * One Shoal wave's details: what the swarm moved, and per node where its time went (from the
 * counters read every second: `net/sampler.ts`).
 */
function swarmReport(
  wave: WaveName,
  result: WaveResult,
  options: Options,
  imageBytes: number,
  slowNames: ReadonlySet<string>,
): string[] {
  const swarm = result.swarm;
  if (swarm === undefined) {
    return [];
  }
  const x = (bytes: number): string => ratio(bytes / imageBytes);
  const megabytes = (perSecond: number): string => (perSecond / 1e6).toFixed(2);
  const seed = seedTimeline(swarm.samples);
  const seedLink = bytesPerSecond(options.controlMbit);
  const sending =
    seed.firstSendS !== undefined && seed.lastSendS !== undefined
      ? seed.lastSendS - seed.firstSendS
      : 0;
  const lines = [
    `${wave}: agents fetched ${x(swarm.fetched.peer)}× the image from peers, ` +
      `${x(swarm.fetched.seed)}× from the seed, ${x(swarm.fetched.origin)}× from the origin; ` +
      `uploaded ${x(swarm.uploaded)}×`,
    `seed server sent ${x(swarm.seedServed)}× the image; piece requests failed: ` +
      `${swarm.piecesFailed}, turned away by the seed's fan-out: ${swarm.piecesRationed}; ` +
      `downloads that fell back to the origin: ${swarm.fallbacks.stall} stalled, ` +
      `${swarm.fallbacks['seed-failed']} after the seed gave up; agents answered 429 for want of ` +
      `an upload slot: ${swarm.peerRefusals.busy} (every slot taken), ` +
      `${swarm.peerRefusals['peer-busy']} (the asker's own slots taken)`,
    `seed link: sending from ${seconds(seed.firstSendS ?? 0)} to ${seconds(seed.lastSendS ?? 0)}, ` +
      `idle ${seconds(seed.idleS)} between, ${ratio(sending > 0 ? swarm.seedServed / sending / seedLink : 0)}× ` +
      `its link while sending; the image at the seed's link takes ${seconds(imageBytes / seedLink)}; ` +
      `the seed had taken in half its bytes at ${seconds(seed.ingestHalfS ?? 0)}, all at ${seconds(seed.ingestDoneS ?? 0)}`,
    `seed intake: ${megabytes(seed.intake.mean)} MB/s on average, ` +
      `${ratio(seed.intake.mean / Math.min(seedLink, bytesPerSecond(options.registryMbit)))}× the slower of its link and the registry's ` +
      `(between samples: median ${megabytes(seed.intake.median)}, tenth percentile ${megabytes(seed.intake.p10)} MB/s); ` +
      `intake notices (bytes in, no piece landed since the seed's last look): ${swarm.intakeNotices.sent} sent, ` +
      `${swarm.intakeNotices.waiting} more while waiting for a blob's first byte, heard ${swarm.intakeNotices.heard} times by the agents`,
    `seed piece requests: ${Object.entries(swarm.seedRequests)
      .map(([result, count]) => `${result} ${count}`)
      .join(
        ', ',
      )} (cut off before the agent had it whole: ${swarm.seedCut}); the control link carried ${x(swarm.controlLinkBytes)}× the image out ` +
      `(pieces, NATS, the tracker; TCP/IP headers included) and ${x(swarm.controlLinkInBytes)}× in, ` +
      `${x(swarm.controlLinkInBytes - result.registryLinkBytes)}× besides what the registry sent (the nodes' NATS messages and acknowledgements)`,
    `seed pieces sent past its fan-out count, by exemption: ${Object.entries(swarm.seedExemptions)
      .map(([reason, count]) => `${reason} ${count}`)
      .join(', ')}`,
    `agents' pieces, request to verified: ${(['peer', 'seed'] as const)
      .map(
        (source) =>
          `from ${source === 'peer' ? 'peers' : 'the seed'} ${pieceTimes(swarm.pieceSeconds[source])}`,
      )
      .join('; ')}`,
    `CPU seconds: agents ${swarm.cpuSeconds.agents.toFixed(1)}, seed server ` +
      `${swarm.cpuSeconds.seed.toFixed(1)}, tracker ${swarm.cpuSeconds.tracker.toFixed(1)}, ` +
      `nats-server ${swarm.cpuSeconds.nats.toFixed(1)}; the machine's cores ` +
      `${(machineBusy(swarm.samples) * 100).toFixed(0)} % busy during the pulls (every process)`,
  ];
  const nodes = result.pulls.map((_, i) => nodeTimeline(swarm.samples, i, imageBytes));
  const allBytes = nodes.map((n) => n.fullS ?? Number.NaN);
  const fastBytes = allBytes.filter((_, i) => !slowNames.has(result.pulls[i]?.name ?? ''));
  const swarmDone = Math.max(...fastBytes);
  const ideal = idealSeconds(wave, options, imageBytes, options.nodeMbit);
  lines.push(
    `every ${slowNames.size > 0 ? 'full-speed ' : ''}agent held the whole image at ` +
      `${seconds(swarmDone)}, ${ratio(swarmDone / ideal)}× the ideal (the swarm's own time; ` +
      `the rest of a pull is containerd verifying and unpacking); median ` +
      `${seconds(median(fastBytes))}, ${ratio(median(fastBytes) / ideal)}×`,
  );
  const rows = result.pulls.map((p, i) => {
    const node = nodes[i] ?? nodeTimeline(swarm.samples, i, imageBytes);
    const link = bytesPerSecond(slowNames.has(p.name) ? options.nodeMbit / 4 : options.nodeMbit);
    const last = node.last;
    return [
      p.name + (slowNames.has(p.name) ? ' (slow)' : ''),
      p.error === undefined ? seconds(p.seconds) : 'FAILED',
      seconds(p.doneAtS),
      node.firstS === undefined ? '' : seconds(node.firstS),
      node.halfS === undefined ? '' : seconds(node.halfS),
      node.fullS === undefined ? '' : seconds(node.fullS),
      node.clientHalfS === undefined ? '' : seconds(node.clientHalfS),
      node.clientFullS === undefined ? '' : seconds(node.clientFullS),
      seconds(node.idleS),
      ratio(node.rate / link),
      last === undefined ? '' : x(last.seed),
      last === undefined ? '' : x(last.peer),
      last === undefined ? '' : x(last.uploaded),
      last === undefined ? '' : String(last.deferred),
      last === undefined ? '' : String(last.failed),
    ];
  });
  lines.push(
    table(
      [
        'node',
        'time',
        'done at',
        '1st bytes',
        'half',
        'all bytes',
        'ctr half',
        'ctr all',
        'idle',
        'rate ÷ link',
        'seed ×',
        'peers ×',
        'up ×',
        'turned away',
        'failed',
      ],
      rows,
    ),
    'per node, from counters read every second: 1st bytes, half, all bytes = when the agent had',
    'fetched that much of the image (s since the start); ctr half, ctr all = when it had sent',
    'containerd that much (as far as its verified prefix reached); idle = seconds in between with nothing',
    'fetched; rate = image ÷ (all bytes − 1st bytes) over its link; seed/peers/up × = bytes from',
    'the seed, from peers and uploaded, over the image; turned away = by the seed fan-out.',
  );
  return lines;
}

/** Every Shoal wave's samples, with the nodes' names, as JSON (`--timeline`). */
async function writeTimeline(
  file: string,
  results: ReadonlyMap<WaveName, WaveResult>,
): Promise<void> {
  const waves = [...results]
    .filter(([, r]) => r.swarm !== undefined)
    .map(([wave, r]) => ({
      wave,
      nodes: r.pulls.map((p) => ({ name: p.name, seconds: p.seconds, doneAtS: p.doneAtS })),
      samples: r.swarm?.samples ?? [],
    }));
  await writeFile(file, `${JSON.stringify({ waves }, null, 1)}\n`);
  progress(`timeline written to ${file}`);
}

/** The report: one table of the waves, then Shoal's details. */
function report(
  options: Options,
  image: GeneratedImage,
  results: ReadonlyMap<WaveName, WaveResult>,
  slowNames: ReadonlySet<string>,
  netem: boolean | undefined,
): string {
  const imageBytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
  const out: string[] = [];
  out.push(
    `Shaped-network benchmark: ${options.nodes} nodes at ${options.nodeMbit} Mbit/s` +
      (options.slowNodes > 0 ? ` (${options.slowNodes} at ${options.nodeMbit / 4} Mbit/s)` : '') +
      `, registry ${options.registryMbit} Mbit/s` +
      (options.registryAnswerMs > 0
        ? ` (answering every GET after ${options.registryAnswerMs} ms)`
        : '') +
      `, cache ${options.cacheMbit} Mbit/s, ` +
      `control (NATS, tracker, seed) ${options.controlMbit} Mbit/s`,
    `links: tbf on both ends of every link` +
      (options.delayMs > 0 || options.lossPct > 0
        ? netem === true
          ? `, netem ${options.delayMs} ms delay and ${options.lossPct} % loss at each end`
          : ', delay and loss SKIPPED (no netem in this kernel)'
        : ''),
    `image: ${image.layers.length} layers + config = ${mib(imageBytes)} ` +
      `(layers ${image.layers.map((l) => mib(l.size)).join(', ')})`,
    ...(options.warmSeed
      ? [
          'warm seed: the seed server held the image before the Shoal waves pulled (a preheated cluster)',
        ]
      : []),
    options.lateJoinS > 0
      ? `late join: the last node starts ${options.lateJoinS} s after the others (its time from its own start)`
      : '',
    '',
  );
  const rows: string[][] = [];
  const fastMbit = options.nodeMbit;
  for (const [wave, result] of results) {
    const ok = result.pulls.filter((p) => p.error === undefined);
    const all = Math.max(...result.pulls.map((p) => p.seconds));
    const med = median(result.pulls.map((p) => p.seconds));
    const fast = result.pulls.filter((p) => !slowNames.has(p.name));
    const fastAll = Math.max(...fast.map((p) => p.seconds));
    const slowestMbit = options.slowNodes > 0 ? fastMbit / 4 : fastMbit;
    const ideal = idealSeconds(wave, options, imageBytes, slowestMbit);
    const idealFast = idealSeconds(wave, options, imageBytes, fastMbit);
    const cpu = result.swarm?.cpuSeconds;
    rows.push([
      wave,
      `${ok.length}/${result.pulls.length}`,
      seconds(all),
      seconds(ideal),
      ratio(all / ideal),
      seconds(med),
      ratio(med / idealFast),
      ...(options.slowNodes > 0 ? [seconds(fastAll), ratio(fastAll / idealFast)] : []),
      ratio(result.registryBytes / imageBytes),
      ratio(result.registryLinkBytes / imageBytes),
      cpu === undefined ? '' : (cpu.agents + cpu.seed + cpu.tracker + cpu.nats).toFixed(1),
    ]);
  }
  out.push(
    table(
      [
        'wave',
        'ok',
        'all done',
        'ideal',
        '÷ ideal',
        'median',
        '÷ ideal',
        ...(options.slowNodes > 0 ? ['full-speed done', '÷ ideal'] : []),
        'registry ÷ image',
        'reg. link ÷ image',
        'Shoal CPU s',
      ],
      rows,
    ),
    '',
    'ideal: direct N × image ÷ registry link; cache max(image ÷ registry link, N × image ÷ cache link);',
    'shoal (a perfect swarm) image ÷ min(node link, registry link, seed link), with --warm-seed',
    'image ÷ min(node link, seed link); the median against a full-speed node. reg. link: bytes',
    'out of the registry namespace, TCP/IP headers included.',
    '',
  );
  const times = (wave: WaveName): number =>
    Math.max(...(results.get(wave)?.pulls ?? []).map((p) => p.seconds));
  const shoal = results.get('shoal');
  for (const other of ['direct', 'cache'] as const) {
    if (shoal !== undefined && results.has(other)) {
      out.push(
        `Shoal ÷ ${other}: every node done ${ratio(times('shoal') / times(other))}× the time ` +
          `(${ratio(times(other) / times('shoal'))}× faster)`,
      );
    }
  }
  for (const [wave, result] of results) {
    if (result.swarm !== undefined) {
      out.push('', ...swarmReport(wave, result, options, imageBytes, slowNames));
    }
  }
  // The agents' CPU per byte they fetched and per second they spent pulling: at a low rate a
  // cost per unit of time (timers, small socket reads) shows as CPU per GiB far above the
  // full-speed figure.
  const agentCpu = new Map<WaveName, { perGiB: number; perSecond: number }>();
  for (const [wave, result] of results) {
    if (result.swarm === undefined) {
      continue;
    }
    const { fetched, cpuSeconds } = result.swarm;
    const bytes = fetched.origin + fetched.seed + fetched.peer;
    const pullSeconds = result.pulls.reduce((total, p) => total + p.seconds, 0);
    const figures = {
      perGiB: cpuSeconds.agents / (bytes / 1024 ** 3),
      perSecond: cpuSeconds.agents / pullSeconds,
    };
    agentCpu.set(wave, figures);
    out.push(
      `${wave}: agents ${cpuSeconds.agents.toFixed(1)} CPU s, ` +
        `${figures.perGiB.toFixed(2)} CPU s per GiB fetched, ` +
        `${figures.perSecond.toFixed(3)} of a core per agent while pulling`,
    );
  }
  const now = agentCpu.get('shoal');
  const before = agentCpu.get('baseline');
  if (now !== undefined && before !== undefined) {
    out.push(
      `agent CPU, shoal ÷ baseline: per GiB ${ratio(now.perGiB / before.perGiB)}, ` +
        `per second ${ratio(now.perSecond / before.perSecond)}`,
    );
  }
  for (const [wave, result] of results) {
    for (const pull of result.pulls.filter((p) => p.error !== undefined)) {
      out.push(`FAILED ${wave} ${pull.name}: ${pull.error ?? ''}`);
    }
  }
  return `${out.join('\n')}\n`;
}

/**
 * A source's piece times for the report: the bounds within which half and nine in ten of them
 * fell (the histogram's buckets: an upper bound, not the exact quantile), and their mean.
 */
function pieceTimes(histogram: HistogramFigures): string {
  if (!(histogram.count > 0)) {
    return 'none';
  }
  const bound = (q: number): string => {
    const s = boundWithin(histogram, q);
    return Number.isFinite(s) ? `≤ ${s} s` : `> ${histogram.bounds.at(-1) ?? 0} s`;
  };
  return (
    `half ${bound(0.5)}, nine in ten ${bound(0.9)}, mean ` +
    `${(histogram.sum / histogram.count).toFixed(2)} s (${histogram.count} pieces)`
  );
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write('the shaped bench builds network namespaces: run it as root\n');
    return 2;
  }
  const interrupt = interruptOnSignal();
  const teardown = newTeardown();
  try {
    const lab = await NetLab.create(progress);
    teardown.add('network namespaces', () => lab.close());
    const shape = (mbit: number): LinkShape => ({
      mbit,
      delayMs: options.delayMs,
      lossPct: options.lossPct,
    });
    const registryHost = await lab.addHost('reg', 1, shape(options.registryMbit));
    const controlHost = await lab.addHost('ctl', 2, shape(options.controlMbit));
    const cacheHost = await lab.addHost('cache', 3, shape(options.cacheMbit));
    const slowNames = new Set<string>();
    const nodes: LabNode[] = [];
    for (let i = 0; i < options.nodes; i++) {
      // The slow nodes are the first ones; the late one is the last.
      const slow = i < options.slowNodes;
      const host: LabHost = await lab.addHost(
        `n${i}`,
        10 + i,
        shape(slow ? options.nodeMbit / 4 : options.nodeMbit),
      );
      if (slow) {
        slowNames.add(host.name);
      }
      nodes.push({ host, startAfterS: i === options.nodes - 1 ? options.lateJoinS : 0 });
    }
    progress(`lab up: ${nodes.length} nodes, the registry, a cache and the control namespace`);

    // The origin, on its own address; the image is pushed over the bench's control link.
    const registry = await startRegistry({ netns: registryHost.netns, host: registryHost.address });
    teardown.add('registry', () => registry.stop());
    const layout = await makeTempDir('bench-shaped');
    teardown.add('image layout', () => layout.remove());
    progress(`generating and pushing a ${options.layerSizes.length}-layer image`);
    const image = await generateImage(join(layout.path, 'image'), {
      layerSizes: options.layerSizes,
      seed: `shaped-${Date.now()}`,
    });
    const pushed = await pushImage(image, registry.host, REPOSITORY);
    interrupt.signal.throwIfAborted();
    // A registry slow to answer: every wave reaches it through a proxy that holds each GET.
    let origin = registry;
    let ref = pushed;
    if (options.registryAnswerMs > 0) {
      const proxy = await startFaultProxy({ upstream: registry.url, host: lab.controlAddress });
      teardown.add('registry answer delay', () => proxy.stop());
      proxy.set({
        kind: 'slow',
        delayMs: options.registryAnswerMs,
        rateBytes: Infinity,
        methods: ['GET'],
      });
      const host = new URL(proxy.url).host;
      origin = { ...registry, host, url: proxy.url };
      ref = `${host}${pushed.slice(registry.host.length)}`;
    }

    const context: WaveContext = {
      nodes,
      registry: origin,
      ref,
      timeoutMs: options.timeoutMs,
      signal: interrupt.signal,
    };
    const results = new Map<WaveName, WaveResult>();
    for (const wave of options.waves) {
      interrupt.signal.throwIfAborted();
      const result =
        wave === 'direct'
          ? await directWave(context, registryHost)
          : wave === 'cache'
            ? await cacheWave(context, registryHost, cacheHost)
            : await shoalWave(context, registryHost, controlHost, options.shoalEnv, {
                buildRoot: wave === 'baseline' ? options.agentBuild : undefined,
                seedToo: options.baselineSeed,
                env: cpuProfileEnv(options.cpuProfDir),
                ...(options.warmSeed
                  ? {
                      warmSeed: {
                        repository: REPOSITORY,
                        blobs: image.blobs.map(({ digest, size }) => ({ digest, size })),
                      },
                    }
                  : {}),
              });
      const slowest = Math.max(...result.pulls.map((p) => p.seconds));
      progress(`${wave}: every node done in ${seconds(slowest)}`);
      results.set(wave, result);
    }
    interrupt.signal.throwIfAborted();
    process.stdout.write(report(options, image, results, slowNames, lab.netem));
    if (options.timelineFile !== undefined) {
      await writeTimeline(options.timelineFile, results);
    }
    return [...results.values()].some((r) => r.pulls.some((p) => p.error !== undefined)) ? 1 : 0;
  } finally {
    await teardown.run();
    interrupt.release();
  }
}

await runBench(main);
