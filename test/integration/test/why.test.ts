/**
 * "Did P2P happen?": each blob a pull brings is one `blob pulled` log line with its bytes by
 * source and the peers that sent them, and `shoal-why IMAGE` on the node tells the same per
 * layer: a second node's pull shows bytes from peers or the seed and none from the origin, a
 * repeat pull shows the cache, and the counts add up to the blobs' sizes.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { freePort, serviceMain } from '@shoal/testkit';

import { runTool, type ToolRun } from '../src/cli.js';
import { MiB } from '../src/files.js';
import { bytesBySource, pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const WHY = serviceMain('agent').replace(/main\.js$/, 'why.js');
const REPOSITORY = 'shoal/why';

interface Row {
  role: string;
  digest: string;
  size: number;
  record?: {
    image: string;
    bytes: { peer: number; seed: number; origin: number; cache: number };
    peers: string[];
    outcome: string;
  };
}

function why(args: readonly string[]): Promise<ToolRun> {
  return runTool(WHY, args);
}

describe('where the bytes came from', () => {
  let cluster: Cluster;
  let ref: string;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [6 * MiB, 2 * MiB],
      seed: 'why',
      repository: REPOSITORY,
      trackers: 1,
      agents: [{ peerId: 'why-a' }, { peerId: 'why-b' }],
    });
    ref = `${cluster.registry.host}/${REPOSITORY}:${cluster.image.tag}`;
  });

  after(async () => {
    await cluster.stop();
  });

  it('answers per layer where a pull got its bytes, and logs one line per blob', async () => {
    const [first, second] = cluster.agents;
    assert.ok(first !== undefined && second !== undefined);
    for (const agent of [first, second]) {
      for (const outcome of await pullBlobs(agent, cluster, REPOSITORY)) {
        assert.equal(outcome.status, 200);
      }
    }
    const result = await why([ref, '--mirror', second.url, '--json']);
    assert.equal(result.code, 0, result.stderr);
    const rows = JSON.parse(result.stdout) as Row[];
    assert.deepEqual(
      rows.map((r) => r.digest).sort(),
      [cluster.image.config.digest, ...cluster.image.layers.map((l) => l.digest)].sort(),
    );
    const totals = { peer: 0, seed: 0, origin: 0 };
    for (const row of rows) {
      const record = row.record;
      assert.ok(record !== undefined, `${row.digest} has a record`);
      assert.equal(record.outcome, 'verified');
      assert.equal(record.image, `${cluster.registry.host}/${REPOSITORY}`);
      const { peer, seed, origin, cache } = record.bytes;
      assert.equal(peer + seed + origin + cache, row.size, `${row.digest}: bytes add up`);
      assert.equal(origin, 0, 'nothing from the origin on the second node');
      if (peer > 0) {
        assert.ok(record.peers.includes('why-a'), `${row.digest}: the peer is named`);
      }
      totals.peer += peer;
      totals.seed += seed;
      totals.origin += origin;
    }
    // The same figures as the agent's metrics for the blobs of this pull.
    const metrics = await bytesBySource(second);
    assert.equal(totals.peer, metrics.peer);
    assert.equal(totals.seed, metrics.seed);

    const log = await readFile(join(second.dir, 'agent.log'), 'utf8');
    const lines = log
      .split('\n')
      .filter((l) => l.includes('"blob pulled"'))
      .map((l) => JSON.parse(l) as { digest: string; bytes: Record<string, number>; ms: number });
    for (const row of rows) {
      const line = lines.find((l) => l.digest === row.digest);
      assert.ok(line !== undefined, `a log line for ${row.digest}`);
      assert.deepEqual(line.bytes, row.record?.bytes);
      assert.ok(line.ms >= 0);
    }

    // The table a person reads.
    const table = await why([ref, '--mirror', second.url]);
    assert.equal(table.code, 0);
    assert.match(table.stdout, /^blob\s+size\s+peers\s+seed\s+origin\s+cache\s+from\s+time$/m);
    assert.match(table.stdout, /origin 0%, cache 0%/);
  });

  it('shows a repeat pull as cache, and a blob it never pulled as such', async () => {
    const [first] = cluster.agents;
    assert.ok(first !== undefined);
    await pullBlobs(first, cluster, REPOSITORY);
    const rows = JSON.parse((await why([ref, '--mirror', first.url, '--json'])).stdout) as Row[];
    for (const row of rows) {
      assert.equal(row.record?.outcome, 'cache');
      assert.equal(row.record.bytes.cache, row.size);
    }
    const unknown = await fetch(`${first.url}/shoal/v1/blobs/sha256:${'0'.repeat(64)}`);
    assert.equal(unknown.status, 404);
  });

  it('says each error in one line: usage exit 2, unknown image exit 1, no mirror exit 3', async () => {
    const oneLine = (err: string): string => {
      assert.equal(err.split('\n').filter((l) => l !== '').length, 1, err);
      return err.trim();
    };
    const usage = await why([]);
    assert.equal(usage.code, 2);
    assert.match(oneLine(usage.stderr), /^shoal-why: name one image/);
    const flag = await why(['--frobnicate', 'a/b:c']);
    assert.equal(flag.code, 2);
    assert.equal(
      oneLine(flag.stderr),
      'shoal-why: unknown option --frobnicate (shoal-why --help lists the options)',
    );
    const port = await freePort();
    const down = await why([
      `${cluster.registry.host}/a/b:c`,
      '--mirror',
      `http://127.0.0.1:${port}`,
    ]);
    assert.equal(down.code, 3);
    assert.equal(
      oneLine(down.stderr),
      `shoal-why: cannot reach the mirror at http://127.0.0.1:${port}: ECONNREFUSED`,
    );
    const missing = await why([
      `${cluster.registry.host}/shoal/nothing:here`,
      '--mirror',
      cluster.agents[0]?.url ?? '',
    ]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^shoal-why: the mirror answered 404/);
  });
});
