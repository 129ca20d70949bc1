import assert from 'node:assert/strict';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import {
  decodeMessage,
  digestOf,
  encodeMessage,
  encodeUnchecked,
  MAX_BLOB_BYTES,
  messageSchemas,
  pieceHashes,
  pieceHashesSubject,
  pieceHave,
  pieceHaveSubject,
  pieceListDigest,
  piecesVerified,
  piecesVerifiedSubject,
  pieceSizeFor,
  pieceWantSubject,
  preheatProgress,
  seedIntake,
  seedIntakeSubject,
  seedRequestSubject,
  signPiecesVerified,
  STREAMS,
  verifyPiecesVerified,
  type MessageType,
  type PiecesVerified,
} from '../src/index.js';

const fixturesDir = join(import.meta.dirname, '..', '..', 'fixtures', 'v1');
const fixtureFiles = readdirSync(fixturesDir).filter((f) => f.endsWith('.json'));

function isMessageType(name: string): name is MessageType {
  return Object.hasOwn(messageSchemas, name);
}

const MiB = 1024 * 1024;

/** Whether a NATS subject pattern (`*` one token, `>` the rest) matches `subject`. */
function subjectMatches(pattern: string, subject: string): boolean {
  const want = pattern.split('.');
  const have = subject.split('.');
  for (let i = 0; i < want.length; i += 1) {
    if (want[i] === '>') {
      return have.length > i;
    }
    if (i >= have.length || (want[i] !== '*' && want[i] !== have[i])) {
      return false;
    }
  }
  return want.length === have.length;
}

describe('v1 golden fixtures', () => {
  it('has one fixture per message type', () => {
    assert.deepEqual(
      fixtureFiles.map((f) => f.replace(/\.json$/, '')).sort(),
      Object.keys(messageSchemas).sort(),
    );
  });

  for (const file of fixtureFiles) {
    it(`${file} decodes and re-encodes byte for byte`, () => {
      const type = file.replace(/\.json$/, '');
      assert.ok(isMessageType(type));
      const schema = messageSchemas[type];
      const bytes = readFileSync(join(fixturesDir, file));
      const decoded = decodeMessage(schema, bytes);
      assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
      assert.equal(decoded.value.type, type);
      const reencoded = Buffer.from(encodeMessage(schema, decoded.value)).toString('utf8');
      assert.equal(reencoded, bytes.toString('utf8').trim());
      // A valid message encodes to the same bytes unchecked (the tracker's hand-outs).
      assert.equal(Buffer.from(encodeUnchecked(schema, decoded.value)).toString('utf8'), reencoded);
    });
  }
});

describe('decodeMessage', () => {
  it('reports non-JSON input without throwing', () => {
    const result = decodeMessage(pieceHave, Buffer.from('{"type":'));
    assert.ok(!result.ok);
    assert.match(result.error, /not JSON/);
  });

  it('rejects unknown fields, bad digests and overlapping ranges', () => {
    const good = JSON.parse(readFileSync(join(fixturesDir, 'piece-have.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    const cases: Record<string, unknown>[] = [
      { ...good, extra: 1 },
      { ...good, blob: 'sha256:abc' },
      { ...good, blob: 'md5:' + 'a'.repeat(32) },
      {
        ...good,
        pieces: [
          [0, 4],
          [3, 6],
        ],
      },
      { ...good, pieces: [[4, 4]] },
      { ...good, peer: { id: 'has.dot', url: 'http://x:1' } },
      { ...good, peer: { id: 'ok', url: 'ftp://x' } },
    ];
    for (const bad of cases) {
      const result = decodeMessage(pieceHave, Buffer.from(JSON.stringify(bad)));
      assert.equal(result.ok, false, JSON.stringify(bad));
    }
  });

  it('rejects piece hashes beyond the end of the blob', () => {
    const blob = digestOf(Buffer.from('x')).toString();
    const result = pieceHashes.safeParse({
      type: 'piece-hashes',
      blob,
      size: 10,
      pieceSize: 4,
      first: 2,
      hashes: ['a'.repeat(64), 'b'.repeat(64)],
    });
    assert.equal(result.success, false);
  });

  it('rejects a piece layout other than the one the blob size calls for, and giant blobs', () => {
    const blob = digestOf(Buffer.from('x')).toString();
    const batch = { type: 'piece-hashes', blob, first: 0, hashes: ['a'.repeat(64)] };
    // A one-byte piece size for a 4 PiB blob would have an agent track 2^52 pieces.
    assert.equal(pieceHashes.safeParse({ ...batch, size: 2 ** 52, pieceSize: 1 }).success, false);
    assert.equal(
      pieceHashes.safeParse({ ...batch, size: 10 * MiB, pieceSize: MiB }).success,
      false,
    );
    assert.equal(
      pieceHashes.safeParse({ ...batch, size: MAX_BLOB_BYTES + 1, pieceSize: 16 * MiB }).success,
      false,
    );
    assert.equal(
      pieceHashes.safeParse({ ...batch, size: 10 * MiB, pieceSize: 256 * 1024 }).success,
      true,
    );
    assert.equal(
      pieceHashes.safeParse({
        ...batch,
        size: MAX_BLOB_BYTES,
        pieceSize: pieceSizeFor(MAX_BLOB_BYTES),
      }).success,
      true,
    );
  });

  it('still reads a preheat-progress from a watcher that sent no byte counts', () => {
    const older = {
      type: 'preheat-progress',
      id: 'job-42',
      state: 'running',
      blobsDone: 2,
      blobsTotal: 5,
    };
    const decoded = decodeMessage(preheatProgress, Buffer.from(JSON.stringify(older)));
    assert.ok(decoded.ok, decoded.ok ? '' : decoded.error);
    assert.equal(decoded.value.bytesTotal, undefined);
  });

  it('refuses to encode an invalid message', () => {
    assert.throws(() =>
      encodeMessage(pieceHave, {
        type: 'piece-have',
        blob: 'nope',
        peer: { id: 'a', url: 'http://a:1' },
        pieces: [],
        complete: false,
      }),
    );
  });
});

describe('subjects', () => {
  const blob = digestOf(Buffer.from('hello')).toString();
  const hex = blob.slice('sha256:'.length);

  it('carry the algorithm and hex as separate tokens under a versioned domain', () => {
    assert.equal(pieceHaveSubject(blob, 'node-a'), `shoal.swarm.v1.have.sha256.${hex}.node-a`);
    assert.equal(pieceHashesSubject(blob), `shoal.pieces.v1.hashes.sha256.${hex}`);
    assert.equal(seedRequestSubject(blob), `shoal.seed.v1.request.sha256.${hex}`);
  });

  it('fall inside the stream that owns them', () => {
    const matches = (filter: string, subject: string): boolean =>
      subject.startsWith(filter.replace(/>$/, ''));
    assert.ok(STREAMS.swarm.subjects.some((f) => matches(f, pieceHaveSubject(blob, 'node-a'))));
    assert.ok(STREAMS.wants.subjects.some((f) => matches(f, pieceWantSubject(blob, 'node-a'))));
    assert.ok(STREAMS.pieces.subjects.some((f) => matches(f, pieceHashesSubject(blob))));
    assert.ok(STREAMS.seed.subjects.some((f) => matches(f, seedRequestSubject(blob))));
  });

  it('declare streams nats-server accepts: a duplicate window no longer than the max age', () => {
    for (const spec of Object.values(STREAMS)) {
      assert.ok(spec.maxAgeMs === 0 || spec.duplicateWindowMs <= spec.maxAgeMs, spec.name);
    }
  });

  it('refuse a digest that is not valid', () => {
    assert.throws(() => pieceHaveSubject('sha256:../../x', 'node-a'));
  });
});

describe('names and digests from NATS', () => {
  const fixture = (name: string): Record<string, unknown> =>
    JSON.parse(readFileSync(join(fixturesDir, `${name}.json`), 'utf8')) as Record<string, unknown>;

  it('are held to the OCI grammar the mirror applies to its paths', () => {
    for (const type of ['piece-want', 'seed-request', 'preheat-nodes'] as const) {
      const good = fixture(type);
      const schema = messageSchemas[type];
      assert.ok(decodeMessage(schema, Buffer.from(JSON.stringify(good))).ok, type);
      for (const bad of [
        { repository: '../../v2/_catalog' },
        { repository: 'Team/App' },
        { repository: 'team//app' },
        { repository: `a/${'b'.repeat(255)}` },
        { repository: '' },
        { registry: 'evil.example.com/x?y=' },
        { registry: 'user@evil.example.com' },
        { registry: '' },
      ]) {
        const result = decodeMessage(schema, Buffer.from(JSON.stringify({ ...good, ...bad })));
        assert.equal(result.ok, false, `${type} with ${JSON.stringify(bad)}`);
      }
    }
  });

  it('take only job ids that are safe subject tokens', () => {
    const good = fixture('seed-request');
    const result = decodeMessage(
      messageSchemas['seed-request'],
      Buffer.from(JSON.stringify({ ...good, reason: { kind: 'preheat', job: 'a.>' } })),
    );
    assert.equal(result.ok, false);
  });
});

describe('pieces-verified', () => {
  it('binds the piece hashes by the sha256 of their hex, concatenated in order', () => {
    const list = ['a'.repeat(64), 'b'.repeat(64)];
    // sha256 of 64 "a" then 64 "b", computed independently (Python's hashlib).
    assert.equal(
      pieceListDigest(list),
      'fa0dafbf43f1f551e536353e9d1a942a8e86e41a0b58dfeaf264ef217f6b862a',
    );
    assert.notEqual(pieceListDigest([...list].reverse()), pieceListDigest(list));
    assert.notEqual(pieceListDigest(list.slice(0, 1)), pieceListDigest(list));
  });

  it('refuses a piece size the blob size does not call for', () => {
    const good = JSON.parse(
      readFileSync(join(fixturesDir, 'pieces-verified.json'), 'utf8'),
    ) as Record<string, unknown>;
    const bad = { ...good, pieceSize: 1024 };
    assert.equal(decodeMessage(piecesVerified, Buffer.from(JSON.stringify(bad))).ok, false);
    assert.equal(decodeMessage(piecesVerified, Buffer.from(JSON.stringify(good))).ok, true);
  });

  it("accepts a record only with a signature by one of the seed's keys, over every field", () => {
    // The fixture's key: Ed25519 from the 32-byte seed 0x07 repeated (its public half here).
    const fixtureKey = createPublicKey(
      '-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=\n-----END PUBLIC KEY-----\n',
    );
    const fixture = decodeMessage(
      piecesVerified,
      readFileSync(join(fixturesDir, 'pieces-verified.json')),
    );
    assert.ok(fixture.ok);
    assert.equal(verifyPiecesVerified(fixture.value, [fixtureKey]), true);

    const seed = generateKeyPairSync('ed25519');
    const other = generateKeyPairSync('ed25519');
    const record = signPiecesVerified(seed.privateKey, {
      type: 'pieces-verified',
      blob: fixture.value.blob,
      size: 3 * 1024 * 1024,
      pieceSize: pieceSizeFor(3 * 1024 * 1024),
      hashes: pieceListDigest(['c'.repeat(64)]),
    });
    assert.equal(decodeMessage(piecesVerified, Buffer.from(JSON.stringify(record))).ok, true);
    assert.equal(verifyPiecesVerified(record, [seed.publicKey]), true);
    // Rotation: any of the keys given.
    assert.equal(verifyPiecesVerified(record, [other.publicKey, seed.publicKey]), true);
    assert.equal(verifyPiecesVerified(record, [other.publicKey]), false, 'another key');
    assert.equal(verifyPiecesVerified(record, []), false, 'no key: nothing is trusted');
    const altered: PiecesVerified[] = [
      { ...record, blob: `sha256:${'0'.repeat(64)}` },
      { ...record, size: record.size + 1 },
      { ...record, hashes: pieceListDigest(['d'.repeat(64)]) },
      { ...record, sig: record.sig.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) },
    ];
    for (const forged of altered) {
      assert.equal(verifyPiecesVerified(forged, [seed.publicKey]), false, JSON.stringify(forged));
    }
    assert.equal(
      piecesVerifiedSubject(record.blob),
      `shoal.pieces.v1.verified.sha256.${record.blob.slice('sha256:'.length)}`,
    );
  });
});

describe('seed-intake', () => {
  it('refuses more bytes received than the blob has, or bytes without the size, and lives outside the stored streams', () => {
    const good = JSON.parse(readFileSync(join(fixturesDir, 'seed-intake.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    const size = good.size as number;
    for (const [received, ok] of [
      [0, true],
      [size, true],
      [size + 1, false],
      [-1, false],
      [1.5, false],
    ] as const) {
      const message = Buffer.from(JSON.stringify({ ...good, received }));
      assert.equal(decodeMessage(seedIntake, message).ok, ok, `received ${received}`);
    }
    // Before the first byte: how long the seed has waited, the size once its source answered;
    // after it, how long it has waited on the rest of a transfer that broke off, with the size.
    const unsized = Object.fromEntries(Object.entries(good).filter(([key]) => key !== 'size'));
    for (const [fields, ok] of [
      [{ ...unsized, received: 0, waitingMs: 4_000 }, true],
      [{ ...good, received: 0, waitingMs: 4_000 }, true],
      [{ ...good, received: 1, waitingMs: 4_000 }, true],
      [{ ...good, received: size + 1, waitingMs: 4_000 }, false],
      [{ ...unsized, received: 1, waitingMs: 4_000 }, false],
      [{ ...unsized, received: 0, waitingMs: -1 }, false],
      [{ ...unsized, received: 0 }, false],
    ] as const) {
      const message = Buffer.from(JSON.stringify(fields));
      assert.equal(decodeMessage(seedIntake, message).ok, ok, JSON.stringify(fields));
    }
    const blob = good.blob as string;
    const subject = seedIntakeSubject(blob);
    assert.equal(subject, `shoal.intake.v1.sha256.${blob.slice('sha256:'.length)}`);
    // A notice is news only while it is new: no stream may store it.
    for (const stream of Object.values(STREAMS)) {
      for (const pattern of stream.subjects) {
        assert.ok(
          !subjectMatches(pattern, subject),
          `${stream.name} (${pattern}) stores ${subject}`,
        );
      }
    }
  });
});
