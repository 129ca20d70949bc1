import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PieceRations } from '../src/http/piece-rations.js';

/** The local copy of a blob the pieces are read from (only its identity counts). */
const BLOB = { digest: `sha256:${'b'.repeat(64)}` };

/** A clock the test moves by hand. */
function manualClock(): { now: () => number; advance(ms: number): void } {
  let t = 5_000_000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

describe('PieceRations', () => {
  const settings = { copies: 1, windowMs: 2_000, holdMs: 20_000 };

  it('sends a piece once while its copy is on a slow link, however long that takes', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    const first = rations.take(BLOB, 0);
    assert.ok(first);
    // The old window counted from the start: after 2 s a second copy went out. Now the copy
    // in flight counts until it is sent (up to the hold).
    for (let ms = 0; ms < 19_000; ms += 1_000) {
      clock.advance(1_000);
      assert.equal(rations.take(BLOB, 0), undefined, `a second copy at ${ms + 1_000} ms`);
    }
    // Other pieces are not held back.
    assert.ok(rations.take(BLOB, 1));
    first.end(true);
    // Sent whole: the window for the swarm to hear of it.
    clock.advance(1_999);
    assert.equal(rations.take(BLOB, 0), undefined);
    clock.advance(1);
    assert.ok(rations.take(BLOB, 0), 'after the window, a copy for whoever still lacks it');
  });

  it('hands a ticket out whatever the count when it may not refuse, and counts that copy too', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    const first = rations.take(BLOB, 0);
    assert.ok(first);
    assert.equal(rations.take(BLOB, 0), undefined);
    const forced = rations.take(BLOB, 0, { mayRefuse: false });
    assert.ok(forced, 'a copy while refusing is not allowed');
    first.end(true);
    clock.advance(1_000);
    forced.end(true);
    // The first copy's window is over; the forced one's is not.
    clock.advance(1_000);
    assert.equal(rations.take(BLOB, 0), undefined, 'the forced copy counts');
    clock.advance(1_000);
    assert.ok(rations.take(BLOB, 0));
  });

  it('sends the piece again to the agent it went to, and counts both copies for the others', () => {
    const clock = manualClock();
    const exempt: string[] = [];
    const rations = new PieceRations(settings, clock.now, (reason) => exempt.push(reason));
    rations.take(BLOB, 0, { asker: 'agent-a' })?.end(true);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b' }), undefined, 'rationed to others');
    // agent-a restarted without it: its copy helps nobody, least of all itself.
    const again = rations.take(BLOB, 0, { asker: 'agent-a' });
    assert.ok(again, 'the agent that lost its copy gets the piece again');
    assert.deepEqual(exempt, ['asked-again']);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b' }), undefined, 'both copies count');
    assert.equal(rations.take(BLOB, 0), undefined, 'an asker that does not say who it is');
    again.end(true);
    clock.advance(2_000);
    assert.ok(rations.take(BLOB, 0, { asker: 'agent-b' }), 'after the window of both');
    assert.deepEqual(exempt, ['asked-again']);
  });

  it('does not refuse an asker for the copies of agents it could not reach, and only it', () => {
    const clock = manualClock();
    const exempt: string[] = [];
    const two = new PieceRations({ ...settings, copies: 2 }, clock.now, (r) => exempt.push(r));
    two.take(BLOB, 0, { asker: 'agent-a' })?.end(true);
    two.take(BLOB, 0, { asker: 'agent-b' })?.end(true);
    assert.equal(two.take(BLOB, 0, { asker: 'agent-c' }), undefined);
    // Naming a peer with no copy, or itself (it has none), frees nothing.
    assert.equal(
      two.take(BLOB, 0, { asker: 'agent-c', notFrom: ['agent-d', 'agent-c'] }),
      undefined,
    );
    assert.deepEqual(exempt, []);
    // agent-a was killed: agent-c could not reach it; agent-b's copy alone is under the count.
    assert.ok(two.take(BLOB, 0, { asker: 'agent-c', notFrom: ['agent-a'] }));
    assert.deepEqual(exempt, ['not-from']);
    // The others still count every copy; one that names agent-a too counts b's and c's.
    assert.equal(two.take(BLOB, 0, { asker: 'agent-d' }), undefined);
    assert.equal(two.take(BLOB, 0, { asker: 'agent-d', notFrom: ['agent-a'] }), undefined);
    // Naming both holders: nobody it can reach holds the piece.
    assert.ok(two.take(BLOB, 0, { asker: 'agent-d', notFrom: ['agent-a', 'agent-c'] }));
    assert.deepEqual(exempt, ['not-from', 'not-from']);
  });

  it('does not refuse an asker the swarm does not hear, and still counts its copy', () => {
    const clock = manualClock();
    const exempt: string[] = [];
    const rations = new PieceRations(settings, clock.now, (r) => exempt.push(r));
    rations.take(BLOB, 0, { asker: 'agent-a' })?.end(true);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b', unheard: false }), undefined);
    assert.deepEqual(exempt, []);
    // agent-b's wants and haves do not reach the swarm: it could not learn agent-a has it.
    const copy = rations.take(BLOB, 0, { asker: 'agent-b', unheard: true });
    assert.ok(copy);
    assert.deepEqual(exempt, ['unheard']);
    copy.end(true);
    // Both copies count for an asker the swarm hears.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c' }), undefined);
    clock.advance(2_000);
    // Under the count: a ticket like any other, no exemption.
    assert.ok(rations.take(BLOB, 0, { asker: 'agent-c', unheard: true }));
    assert.deepEqual(exempt, ['unheard']);
  });

  it('does not refuse a starved asker the copies handed out longer ago than its lateness, and only those', () => {
    const clock = manualClock();
    const exempt: string[] = [];
    const rations = new PieceRations(
      { copies: 1, windowMs: 5_000, holdMs: 20_000 },
      clock.now,
      (r) => exempt.push(r),
    );
    // The slow agent gets piece 0; its copy takes 3 s on its link, then counts for the window.
    const slow = rations.take(BLOB, 0, { asker: 'slow' });
    assert.ok(slow);
    clock.advance(1_500);
    // agent-b starved, its lateness 1 s: the copy went out 1.5 s ago and did not reach it.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b' }), undefined, 'not starved: refused');
    const starved = rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 1_000 });
    assert.ok(starved, 'the copy from 1.5 s ago does not count');
    assert.deepEqual(exempt, ['starved']);
    starved.end(true);
    // agent-b's copy was handed out just now: it counts for another starved asker, who
    // should get the piece from agent-b.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c', starvedLateMs: 1_000 }), undefined);
    clock.advance(1_500);
    slow.end(true);
    // Sent whole to the slow agent only now, but handed out 3 s ago: it does not count for an
    // asker whose lateness is 2 s; agent-b's, handed out 1.5 s ago, does.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c', starvedLateMs: 2_000 }), undefined);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c', starvedLateMs: 1_501 }), undefined);
    // A lateness of just under 1.5 s: agent-b did not pass its copy on in time either.
    assert.ok(rations.take(BLOB, 0, { asker: 'agent-c', starvedLateMs: 1_499 }));
    assert.deepEqual(exempt, ['starved', 'starved']);
  });

  it('takes a starved lateness under a second as a second', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    rations.take(BLOB, 0, { asker: 'agent-a' })?.end(true);
    clock.advance(1_000);
    // `shoal-starved: 0` would have the seed count nothing but copies of this very moment.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 0 }), undefined);
    clock.advance(1);
    assert.ok(rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 0 }));
  });

  it('lets another copy go when the first was cut off', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    rations.take(BLOB, 3)?.end(false);
    assert.ok(rations.take(BLOB, 3));
  });

  it("counts a copy waiting its turn in full: its hold and a starved asker's exemption run from its start", () => {
    const clock = manualClock();
    const exempt: string[] = [];
    const rations = new PieceRations(settings, clock.now, (reason) => exempt.push(reason));
    const waiting = rations.take(BLOB, 0, { asker: 'agent-a', waits: true });
    assert.ok(waiting);
    // In line for longer than the hold and than a starved asker's lateness: it still counts,
    // as its agent has not got a byte of it.
    clock.advance(25_000);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b' }), undefined, 'past the hold');
    assert.equal(
      rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 1_000 }),
      undefined,
      'a starved asker, the copy handed out 25 s ago but not started',
    );
    assert.deepEqual(exempt, []);
    waiting.started();
    waiting.started();
    // Going out for 1.5 s: a starved asker with a lateness of 1 s is not refused for it.
    clock.advance(1_500);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b' }), undefined);
    const starved = rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 1_000 });
    assert.ok(starved);
    assert.deepEqual(exempt, ['starved']);
    starved.end(false);
    // The hold runs from the start too: 20 s after it, the slow copy stops counting.
    clock.advance(18_499);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c' }), undefined);
    clock.advance(1);
    assert.ok(rations.take(BLOB, 0, { asker: 'agent-c' }), 'past the hold from its start');
  });

  it('times a waiting copy sent whole by its start for a starved asker, and its window by its end', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    const waiting = rations.take(BLOB, 0, { asker: 'agent-a', waits: true });
    assert.ok(waiting);
    clock.advance(10_000);
    waiting.started();
    clock.advance(500);
    waiting.end(true);
    // Started 0.5 s ago: a starved asker with a lateness of 1 s is refused for it.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 1_000 }), undefined);
    clock.advance(501);
    const late = rations.take(BLOB, 0, { asker: 'agent-b', starvedLateMs: 1_000 });
    assert.ok(late, 'started over 1 s ago, not passed on: the starved asker gets a copy');
    late.end(false);
    // The window counts from the end: 2 s after it, anyone may have another copy.
    clock.advance(1_498);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c' }), undefined);
    clock.advance(1);
    assert.ok(rations.take(BLOB, 0, { asker: 'agent-c' }));
  });

  it("counts a waiting copy's demand: the askers of its piece turned away since it was handed out", () => {
    const clock = manualClock();
    const rations = new PieceRations({ ...settings, copies: 2 }, clock.now);
    const first = rations.take(BLOB, 0, { asker: 'agent-a', waits: true });
    assert.ok(first);
    const second = rations.take(BLOB, 0, { asker: 'agent-b', waits: true });
    assert.ok(second);
    // The count is full: each later asker of piece 0 is turned away and counts for both.
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-c' }), undefined);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-d' }), undefined);
    // Another piece's askers, and an asker exempt (it asks again), are not demand for it.
    const other = rations.take(BLOB, 1, { asker: 'agent-c', waits: true });
    assert.ok(other);
    const again = rations.take(BLOB, 0, { asker: 'agent-a', waits: true });
    assert.ok(again, 'its own copy does not count against it');
    assert.equal(first.demand(), 2);
    assert.equal(second.demand(), 2);
    assert.equal(other.demand(), 0);
    // A copy handed out later counts only the refusals since.
    assert.equal(again.demand(), 0);
    assert.equal(rations.take(BLOB, 0, { asker: 'agent-e' }), undefined);
    assert.deepEqual([first.demand(), again.demand()], [3, 1]);
    for (const ticket of [first, second, other, again]) {
      ticket.end(false);
    }
  });

  it('stops waiting on a copy held longer than the hold', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    const stuck = rations.take(BLOB, 0);
    assert.ok(stuck);
    clock.advance(19_999);
    assert.equal(rations.take(BLOB, 0), undefined);
    clock.advance(1);
    const second = rations.take(BLOB, 0);
    assert.ok(second, 'the slow copy no longer counts');
    assert.equal(rations.take(BLOB, 0), undefined, 'the new copy does');
    stuck.end(true);
    second.end(true);
    clock.advance(2_000);
    assert.ok(rations.take(BLOB, 0));
  });

  it('counts up to `copies` at once, and nothing with 0', () => {
    const clock = manualClock();
    const two = new PieceRations({ ...settings, copies: 2 }, clock.now);
    assert.ok(two.take(BLOB, 0));
    assert.ok(two.take(BLOB, 0));
    assert.equal(two.take(BLOB, 0), undefined);
    const none = new PieceRations({ ...settings, copies: 0 }, clock.now);
    for (let i = 0; i < 10; i++) {
      assert.ok(none.take(BLOB, 0));
    }
    assert.equal(none.size, 0);
  });

  it('keeps memory to the pieces served recently', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    rations.take(BLOB, 0)?.end(false);
    assert.equal(rations.size, 0, 'a cut-off copy leaves nothing behind');
    const ticket = rations.take(BLOB, 1);
    ticket?.end(true);
    ticket?.end(true);
    assert.equal(rations.size, 1);
    clock.advance(2_000);
    assert.ok(rations.take(BLOB, 1));
  });

  it('counts the copies of one local copy of a blob: the blob seeded again starts with none', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    rations.take(BLOB, 0)?.end(true);
    assert.equal(rations.take(BLOB, 0), undefined, 'within the window, a copy went out');
    // Evicted and seeded again (nobody holds it whole: the copy sent before helps nobody now).
    const again = { digest: BLOB.digest };
    assert.ok(rations.take(again, 0), 'the new copy of the blob sends the piece at once');
    assert.equal(rations.take(again, 0), undefined, 'and rations it from then on');
  });

  it('forgets the pieces of blobs nobody asks for any more', () => {
    const clock = manualClock();
    const rations = new PieceRations(settings, clock.now);
    // A rollout a second, each a new blob of 8 pieces sent whole once: the entries of the old
    // ones must not pile up.
    for (let rollout = 0; rollout < 600; rollout += 1) {
      const blob = { digest: `sha256:${rollout.toString(16).padStart(64, '0')}` };
      for (let piece = 0; piece < 8; piece += 1) {
        rations.take(blob, piece)?.end(true);
      }
      clock.advance(1_000);
      assert.ok(rations.size <= 3 * 8, `${rations.size} entries after ${rollout + 1} rollouts`);
    }
  });

  it('names the pieces it would refuse the asker now, and none past their window', () => {
    const clock = manualClock();
    const exempt: string[] = [];
    const rations = new PieceRations(settings, clock.now, (reason) => exempt.push(reason));
    assert.deepEqual(rations.refusedNow(BLOB), [], 'nothing handed out');
    const sending = rations.take(BLOB, 5, { asker: 'agent-a' });
    const sent = rations.take(BLOB, 2, { asker: 'agent-b' });
    const cut = rations.take(BLOB, 9, { asker: 'agent-c' });
    assert.ok(sending && sent && cut);
    sent.end(true);
    // A copy cut off does not count: piece 9 may go again at once.
    cut.end(false);
    assert.deepEqual(rations.refusedNow(BLOB), [2, 5]);
    assert.deepEqual(rations.refusedNow({ digest: 'another blob' }), []);
    // Each one named is refused to an asker with no exemption, and the others are not.
    assert.equal(rations.take(BLOB, 2, { asker: 'agent-d' }), undefined);
    assert.equal(rations.take(BLOB, 5, { asker: 'agent-d' }), undefined);
    // As the asker asks: not what it would be sent anyway (its own copy, the copy of an agent
    // it cannot get the piece from), nothing when it may not be refused or is not heard.
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-b' }), [5]);
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d', notFrom: ['agent-a'] }), [2]);
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d', unheard: true }), []);
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d', mayRefuse: false }), []);
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d' }), [2, 5]);
    // A starved asker: copies handed out longer ago than its lateness do not count against it.
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d', starvedLateMs: 1_000 }), [2, 5]);
    clock.advance(1_500);
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d', starvedLateMs: 1_000 }), []);
    assert.deepEqual(rations.refusedNow(BLOB, { asker: 'agent-d' }), [2, 5]);
    assert.deepEqual(exempt, [], 'only a copy sent is counted as exempt');
    clock.advance(settings.windowMs - 1_500);
    assert.deepEqual(rations.refusedNow(BLOB), [5], 'piece 2 past its window');
    sending.end(true);
    clock.advance(settings.windowMs);
    assert.deepEqual(rations.refusedNow(BLOB), []);
    assert.equal(rations.size, 0, 'entries whose window passed are forgotten');
    assert.deepEqual(
      new PieceRations({ ...settings, copies: 0 }, clock.now).refusedNow(BLOB),
      [],
      'no rationing',
    );
  });
});
