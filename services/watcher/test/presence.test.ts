import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { KV } from '@nats-io/kv';

import { AgentPresenceView } from '../src/preheat/presence.js';

/** `settled` never touches the bucket itself: an empty object stands for it. */
const bucket = {} as unknown as KV;

/** Milliseconds `settled` took on the wall clock. */
async function timed(run: () => Promise<void>): Promise<number> {
  const started = performance.now();
  await run();
  return performance.now() - started;
}

describe('AgentPresenceView', () => {
  it('trusts a bucket created more than one interval (and the margin) ago at once', async () => {
    const view = new AgentPresenceView(300);
    view.bind(bucket, Date.now() - 60_000);
    const took = await timed(() => view.settled(AbortSignal.timeout(5_000), 1_000));
    assert.ok(took < 200, `settled in ${took} ms`);
  });

  it('waits out one interval plus the margin after a bucket created just now', async () => {
    const view = new AgentPresenceView(300);
    view.bind(bucket, Date.now());
    const took = await timed(() => view.settled(AbortSignal.timeout(10_000), 1_000));
    // 300 ms of interval and 2 s for the agents' puts to land.
    assert.ok(took >= 2_250, `settled in ${took} ms`);
  });

  it('does not wait longer than one settle period from now for a server clock ahead', async () => {
    const view = new AgentPresenceView(300);
    view.bind(bucket, Date.now() + 3_600_000);
    const took = await timed(() => view.settled(AbortSignal.timeout(10_000), 1_000));
    assert.ok(took < 2_800, `settled in ${took} ms`);
  });

  it('waits for the bucket to be declared, and fails naming it when it never is', async () => {
    const later = new AgentPresenceView(300);
    setTimeout(() => later.bind(bucket, Date.now() - 60_000), 300);
    await later.settled(AbortSignal.timeout(5_000), 3_000);

    const never = new AgentPresenceView(300);
    assert.deepEqual(await never.live(), [], 'no agents while undeclared');
    await assert.rejects(
      never.settled(AbortSignal.timeout(5_000), 600),
      /presence bucket shoal_agents is not declared/,
    );
  });

  it('stops waiting when its job is aborted', async () => {
    const view = new AgentPresenceView(60_000);
    view.bind(bucket, Date.now());
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('job stopped')), 100);
    await assert.rejects(view.settled(controller.signal, 1_000), { name: 'AbortError' });
  });
});
