/** Builders shared by the tracker's tests. */
import type { NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  digestOf,
  encodeMessage,
  handout,
  handoutSubject,
  pieceWant,
  type Handout,
  type PeerInfo,
  type PieceHave,
  type PieceRanges,
} from '@shoal/proto';

import type { SwarmMember } from '../src/handout/policy.js';

/** A blob digest derived from a name, so tests read `blob('a')`. */
export function blob(name: string): string {
  return digestOf(Buffer.from(`blob ${name}`)).toString();
}

/** A peer with a URL derived from its id, optionally in a zone. */
export function peer(id: string, zone?: string): PeerInfo {
  const info: PeerInfo = { id, url: `http://${id}.peers.test:65002` };
  return zone === undefined ? info : { ...info, zone };
}

export interface HaveOptions {
  readonly pieces?: PieceRanges;
  readonly complete?: boolean;
  readonly seed?: boolean;
  readonly zone?: string;
}

/** A piece-have of `peerId` for `digest`; by default pieces [0, 10) and not complete. */
export function have(digest: string, peerId: string, options: HaveOptions = {}): PieceHave {
  return {
    type: 'piece-have',
    blob: digest,
    peer: peer(peerId, options.zone),
    pieces: options.pieces ?? [[0, 10]],
    complete: options.complete ?? false,
    seed: options.seed ?? false,
  };
}

/** A swarm member; by default partial with pieces [0, 10), or [0, 100) when complete. */
export function member(
  id: string,
  options: { pieces?: PieceRanges; complete?: boolean; seed?: boolean; zone?: string } = {},
): SwarmMember {
  return {
    peer: peer(id, options.zone),
    pieces: options.pieces ?? (options.complete === true ? [[0, 100]] : [[0, 10]]),
    complete: options.complete ?? false,
    seed: options.seed ?? false,
  };
}

/** Collects every hand-out published on `nc` from now on, by asker (the subject's last token). */
export function collectHandouts(nc: NatsConnection): Map<string, Handout[]> {
  const answers = new Map<string, Handout[]>();
  nc.subscribe(handoutSubject('*'), {
    callback: (error, msg) => {
      const decoded = error === null ? decodeMessage(handout, msg.data) : undefined;
      if (decoded?.ok === true) {
        const asker = msg.subject.split('.').at(-1) ?? '';
        answers.set(asker, [...(answers.get(asker) ?? []), decoded.value]);
      }
    },
  });
  return answers;
}

/** An encoded piece-want of `asker`, holding nothing of `digest` yet, for 4 peers. */
export function firstWant(digest: string, asker: string): Uint8Array {
  return encodeMessage(pieceWant, {
    type: 'piece-want',
    blob: digest,
    peer: peer(asker),
    have: [],
    registry: 'registry.test',
    repository: 'library/app',
    limit: 4,
  });
}
