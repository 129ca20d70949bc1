/**
 * How `shoal-preheat` prints a job: one line for `list` and `--wait`, a block for `status`.
 * Pure functions of the API's answer, so the wording is tested without a watcher.
 */
import type { JobProgressView, JobStatus } from '../preheat/jobs.js';

/** A job as the API returns it: its stored status and, while running, its progress. */
export type ApiJob = JobStatus & { readonly progress?: JobProgressView };

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'] as const;

/** `1536` → `1.5 KiB`: binary units, one decimal. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${String(bytes)} B` : `${value.toFixed(1)} ${UNITS[unit] ?? ''}`;
}

/** `200000` → `3 min 20 s`; whole seconds, at most two units. */
export function formatDuration(ms: number): string {
  const seconds = Math.max(0, Math.ceil(ms / 1000));
  if (seconds < 60) {
    return `${String(seconds)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${String(minutes)} min ${String(seconds % 60)} s`;
  }
  return `${String(Math.floor(minutes / 60))} h ${String(minutes % 60)} min`;
}

function share(done: number, total: number): string {
  return total === 0 ? '100%' : `${String(Math.floor((100 * done) / total))}%`;
}

/** `8.0 MiB/24.0 MiB (33%), blobs 1/3`; blob counts alone for an older watcher's job. */
function seedPart(job: ApiJob): string {
  const blobs = `blobs ${String(job.blobsDone)}/${String(job.blobsTotal)}`;
  if (job.bytesTotal === undefined) {
    return blobs;
  }
  const done = job.bytesDone ?? 0;
  return `${formatBytes(done)}/${formatBytes(job.bytesTotal)} (${share(done, job.bytesTotal)}), ${blobs}`;
}

/** `1/3 16.0 MiB/48.0 MiB (33%)`, for scope `nodes` once agents were handed the job. */
function nodesPart(job: ApiJob): string | undefined {
  if (job.nodesTotal === undefined) {
    return undefined;
  }
  const count = `${String(job.nodesDone ?? 0)}/${String(job.nodesTotal)}`;
  if (job.nodeBytesTotal === undefined) {
    return count;
  }
  const done = job.nodeBytesDone ?? 0;
  return `${count} ${formatBytes(done)}/${formatBytes(job.nodeBytesTotal)} (${share(done, job.nodeBytesTotal)})`;
}

function failureCount(job: ApiJob): number {
  return job.failuresTotal ?? job.failures.length;
}

/** One line: id, state, image, bytes and counts, ETA while running, failures. */
export function jobLine(job: ApiJob): string {
  const nodes = nodesPart(job);
  const parts = [
    job.bytesTotal === undefined ? seedPart(job) : `seed ${seedPart(job)}`,
    nodes === undefined ? undefined : `nodes ${nodes}`,
  ];
  if (job.progress?.etaMs !== undefined) {
    parts.push(`ETA ${formatDuration(job.progress.etaMs)} (${job.progress.phase})`);
  }
  const failures = failureCount(job);
  if (failures > 0) {
    parts.push(`${String(failures)} failure${failures === 1 ? '' : 's'}`);
  }
  return `${job.id} ${job.state} ${job.image}: ${parts.filter((p) => p !== undefined).join(', ')}`;
}

/** The failures, one line each: node (peer id), blob digest, reason. */
export function failureLines(job: ApiJob): string[] {
  if (job.failures.length === 0) {
    return [];
  }
  const rows = [
    ['node', 'blob', 'error'],
    ...job.failures.map((f) => [f.peer || '-', f.blob || '-', f.error]),
  ];
  const widths = [0, 1].map((i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const lines = rows.map(
    (r) =>
      `  ${(r[0] ?? '').padEnd(widths[0] ?? 0)}  ${(r[1] ?? '').padEnd(widths[1] ?? 0)}  ${r[2] ?? ''}`,
  );
  const hidden = failureCount(job) - job.failures.length;
  return hidden > 0 ? [...lines, `  ... and ${String(hidden)} more`] : lines;
}

/** `status`: every field an operator asks about, then the failures by node and blob. */
export function jobBlock(job: ApiJob): string {
  const selector = Object.entries(job.selector)
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  const rows: [string, string | undefined][] = [
    ['job', job.id],
    ['image', job.image],
    ['resolved', job.resolved],
    ['scope', selector === '' ? job.scope : `${job.scope} (${selector})`],
    ['state', job.state],
    ['seed', seedPart(job)],
    ['nodes', nodesPart(job)],
    [
      'ETA',
      job.progress?.etaMs === undefined
        ? undefined
        : `${formatDuration(job.progress.etaMs)} (${job.progress.phase} phase, at the rate so far)`,
    ],
    ['error', job.error],
    ['failures', String(failureCount(job))],
  ];
  const lines = rows
    .filter((row): row is [string, string] => row[1] !== undefined)
    .map(([k, v]) => `${k.padEnd(9)} ${v}`);
  return [...lines, ...failureLines(job)].join('\n');
}
