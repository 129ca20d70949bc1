/**
 * When a piece source counts as vanished: silent while answering for the floor, or for ten
 * times its own recent gap between reads; never while only waiting for heads (an upload
 * budget may hold them back), nor while our own sink holds the reading. Real timers, with a
 * clock the test moves.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';

import { SourceSilence } from '../src/swarm/source-silence.js';

const MIN_MS = 1000;
/** Real time for the watch's timer to look (it looks every quarter of the floor). */
const LOOK_MS = MIN_MS / 4 + 50;

function setup(): { silence: SourceSilence; clock: { ms: number } } {
  const clock = { ms: 1_000_000 };
  const silence = new SourceSilence({ minMs: MIN_MS, maxMs: 15_000, factor: 10 }, () => clock.ms);
  return { silence, clock };
}

describe('SourceSilence', () => {
  it('gives up every request to a source silent past the floor while it answers', async () => {
    const { silence, clock } = setup();
    const given: number[] = [];
    const answering = silence.open('http://a', (ms) => given.push(ms));
    const waitingHead = silence.open('http://a', (ms) => given.push(ms));
    const other = silence.open('http://b', () => assert.fail('another source is not silent'));
    other.read();
    answering.read();
    clock.ms += MIN_MS - 100;
    await sleep(LOOK_MS);
    assert.deepEqual(given, [], 'not before the floor');
    clock.ms += 200;
    other.read();
    await sleep(LOOK_MS);
    assert.deepEqual(given, [MIN_MS + 100, MIN_MS + 100], 'both requests to it, at once');
    for (const handle of [answering, waitingHead, other]) {
      handle.close();
    }
  });

  it('leaves requests that only wait for their head to the idle timeout', async () => {
    const { silence, clock } = setup();
    // A piece server queueing for its upload budget holds heads back for seconds on purpose.
    const first = silence.open('http://a', () => assert.fail('a held-back head is no silence'));
    const second = silence.open('http://a', () => assert.fail('a held-back head is no silence'));
    clock.ms += 12 * MIN_MS;
    await sleep(LOOK_MS);
    first.close();
    second.close();
  });

  it('holds the clock while the sink is busy', async () => {
    const { silence, clock } = setup();
    const handle = silence.open('http://a', () => assert.fail('our own pause is no silence'));
    handle.read();
    handle.busy(true);
    clock.ms += 5 * MIN_MS;
    await sleep(LOOK_MS);
    handle.busy(false);
    clock.ms += MIN_MS - 100;
    await sleep(LOOK_MS);
    handle.close();
  });

  it('waits ten times the source’s own gap between reads when that is longer', async () => {
    const { silence, clock } = setup();
    let given: number | undefined;
    const handle = silence.open('http://a', (ms) => {
      given = ms;
    });
    // A slow link: a read every 400 ms.
    for (let i = 0; i < 40; i += 1) {
      clock.ms += 400;
      handle.read();
    }
    assert.ok(Math.abs(silence.limitMs('http://a') - 4000) < 1, 'ten gaps');
    clock.ms += 3500;
    await sleep(LOOK_MS);
    assert.equal(given, undefined, 'a pause of a slow link is not a silence');
    clock.ms += 1000;
    await sleep(LOOK_MS);
    assert.equal(given, 4500);
    handle.close();
  });

  it('holds the clock when this process was blocked (the bytes wait unread)', async () => {
    const { silence, clock } = setup();
    let given: number | undefined;
    const handle = silence.open('http://a', (ms) => {
      given = ms;
    });
    handle.read();
    clock.ms += 5 * MIN_MS;
    // Blocked past a whole look: the look comes late, and says nothing of the source.
    const until = performance.now() + 3 * LOOK_MS;
    while (performance.now() < until) {
      // A busy loop, as a long collection or a synchronous task would block.
    }
    await sleep(LOOK_MS);
    assert.equal(given, undefined, 'a late look is our stall, not the source');
    clock.ms += MIN_MS + 100;
    await sleep(LOOK_MS);
    assert.equal(given, MIN_MS + 100, 'on time again, the silence counts from the late look');
    handle.close();
  });

  it('judges nothing with a floor of 0', async () => {
    const silence = new SourceSilence({ minMs: 0, maxMs: 15_000, factor: 10 });
    assert.equal(silence.limitMs('http://a'), Number.POSITIVE_INFINITY);
    const handle = silence.open('http://a', () => assert.fail('off'));
    handle.read();
    await sleep(50);
    handle.close();
  });

  it('starts a fresh clock for a source asked again after a quiet spell', async () => {
    const { silence, clock } = setup();
    const first = silence.open('http://a', () => assert.fail('it answered in time'));
    first.read();
    first.close();
    clock.ms += 10 * MIN_MS;
    const second = silence.open('http://a', () => assert.fail('its clock started now'));
    second.read();
    await sleep(LOOK_MS);
    second.close();
  });
});
