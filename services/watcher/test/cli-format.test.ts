import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { formatBytes, formatDuration, jobLine } from '../src/cli/format.js';
import { progressOf, type JobStatus } from '../src/preheat/jobs.js';

const MiB = 1024 * 1024;

const running: JobStatus = {
  id: 'p-1',
  image: 'registry.example.com/team/app:v1',
  resolved: `registry.example.com/team/app@sha256:${'a'.repeat(64)}`,
  scope: 'nodes',
  selector: {},
  platforms: [],
  origin: 'api',
  state: 'running',
  blobsTotal: 4,
  blobsDone: 4,
  bytesTotal: 100 * MiB,
  bytesDone: 100 * MiB,
  nodesTotal: 3,
  nodesDone: 1,
  nodeBytesTotal: 300 * MiB,
  nodeBytesDone: 100 * MiB,
  startedAt: 0,
  nodesStartedAt: 10_000,
  failures: [],
  createdAt: 0,
  updatedAt: 20_000,
};

describe('shoal-preheat output', () => {
  it('writes bytes in binary units and durations in at most two units', () => {
    assert.equal(formatBytes(365), '365 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(50 * 1024 * MiB), '50.0 GiB');
    assert.equal(formatDuration(999), '1 s');
    assert.equal(formatDuration(200_000), '3 min 20 s');
    assert.equal(formatDuration(7_500_000), '2 h 5 min');
  });

  it('estimates the node phase from its own rate, not the seed phase', () => {
    // 100 MiB of 300 MiB in the 10 s since the node phase began: 20 s left.
    const progress = progressOf(running, 20_000);
    assert.ok(progress !== undefined);
    assert.deepEqual(progress, {
      phase: 'nodes',
      bytesDone: 100 * MiB,
      bytesTotal: 300 * MiB,
      etaMs: 20_000,
    });
    assert.equal(
      jobLine({ ...running, progress }),
      'p-1 running registry.example.com/team/app:v1: seed 100.0 MiB/100.0 MiB (100%), blobs 4/4, nodes 1/3 100.0 MiB/300.0 MiB (33%), ETA 20 s (nodes)',
    );
  });

  it('gives no ETA before a twentieth of the bytes, nor for a finished job', () => {
    const early = { ...running, nodeBytesDone: 365 };
    assert.equal(progressOf(early, 20_000)?.etaMs, undefined);
    assert.equal(progressOf({ ...running, state: 'done' }, 20_000), undefined);
  });

  it('shows counts alone for a job an older watcher wrote without bytes', () => {
    const older: JobStatus = { ...running };
    delete older.bytesTotal;
    delete older.bytesDone;
    delete older.nodeBytesTotal;
    delete older.nodeBytesDone;
    assert.equal(
      jobLine(older),
      'p-1 running registry.example.com/team/app:v1: blobs 4/4, nodes 1/3',
    );
  });
});
