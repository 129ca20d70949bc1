/**
 * Authorization before bytes: the mirror serves content by digest (from its cache, a download
 * in flight, peers or the seed server) only to a client the registry itself authorizes for
 * the repository named in the request.
 *
 * Two facts are needed, and both are cached:
 * - the credential may pull from the repository: per (registry, repository, credential
 *   fingerprint), the registry's answer to the client's own credential;
 * - the repository holds the digest: per (registry, repository, digest), learned from a
 *   registry 2xx for it, or from a manifest of that repository the mirror handed out. Without
 *   it, a client allowed to read one repository could name a private layer's digest under it
 *   and be served from the cache.
 * When either is missing the registry is asked: a HEAD of the requested path with the client's
 * Authorization, which proves both. A repository anonymous clients may read is open to any
 * credential. The fingerprint is a SHA-256 of the header; the header itself is kept nowhere.
 *
 * A redirect proves neither: some registries redirect every request, whatever the credential
 * and whatever the repository holds (registry.k8s.io sends each one on to a backend that
 * checks). Taken as a yes, it let any client name under such a registry a private layer the
 * node held from another one and be served it. The probe follows a redirect and reads one
 * byte where it leads (see `registryProbe`); when that fails, the content is read from the
 * registry itself, through the redirect (`upstream`), never from what the node holds.
 */
import { createHash } from 'node:crypto';

import type { Digest } from '@shoal/proto';
import type { UpstreamAnswer, UpstreamRegistry } from '@shoal/registry';

import { referencedDigests } from './manifest-refs.js';
import { TtlCache, type Clock } from './ttl-cache.js';

/** One request to authorize: who (the header), what (repository and digest), where. */
export interface AuthzSubject {
  readonly registry: UpstreamRegistry;
  readonly repository: string;
  readonly kind: 'blob' | 'manifest';
  readonly digest: Digest;
  /** The client's Authorization header as it came, or undefined (anonymous). */
  readonly authorization: string | undefined;
  /** The blob's size in bytes when the node knows it (held, or a download in flight has it). */
  readonly size?: number;
}

export type AuthzDecision =
  | {
      readonly kind: 'allow';
      /**
       * Set when the yes rests on content shown where the registry's answer led, not on the
       * registry's word: it holds for this request only (the manifest served vouches for
       * nothing), and with `size` for a blob of that size only, else the blob is served as the
       * registry serves it (a page that passed for the blob has its own size).
       */
      readonly once?: { readonly size?: number };
    }
  /** The registry refused this client: its own answer (a 401 challenge, 403, 404) goes back. */
  | { readonly kind: 'deny'; readonly answer: UpstreamAnswer }
  /**
   * The registry answered with a redirect, and the content could not be read where it leads,
   * or what answered answers whatever is asked (a sign-in page): nothing says this client may
   * have it, nor that the repository holds it. Serve it as the registry serves it, and not
   * from the node's cache, a download, peers or the seed server.
   */
  | { readonly kind: 'upstream'; readonly answer: UpstreamAnswer }
  /**
   * The registry could not be asked and nothing cached allows the client: fail closed, with
   * the registry's answer when it gave one (a 5xx, a 429).
   */
  | {
      readonly kind: 'unavailable';
      readonly reason: string;
      readonly answer: UpstreamAnswer | undefined;
    };

/**
 * The registry's answer to a probe, with how far a 2xx proves the content is there (see
 * `registryProbe`): `once`, content shown where the registry's answer led, or in place without
 * the registry naming it: a yes for this request only, for a blob of `size` when set;
 * `anything`, what answered answers whatever is asked (a sign-in page): read the content from
 * the registry.
 */
export type ProbeAnswer = UpstreamAnswer & {
  readonly once?: { readonly size?: number };
  readonly anything?: true;
};

/** Asks the registry about `subject`; throws when it cannot be reached. */
export type AuthzProbe = (subject: AuthzSubject, signal: AbortSignal) => Promise<ProbeAnswer>;

export type UnreachablePolicy = 'deny' | 'allow-cached' | 'allow';

export interface AuthorizerOptions {
  readonly probe: AuthzProbe;
  /** How long an allow is reused, in ms. */
  readonly ttlMs: number;
  /** How long a 401/403 is reused, in ms. */
  readonly denyTtlMs: number;
  /** How long past expiry an allow counts while the registry cannot be asked, in ms. */
  readonly staleMs: number;
  /** Most entries in each cache. */
  readonly maxEntries: number;
  /** Time for one probe, in ms. */
  readonly timeoutMs: number;
  readonly unreachable: UnreachablePolicy;
  readonly clock?: Clock;
  /** Told every decision, and whether it came from the cache. */
  readonly onDecision?: (
    subject: AuthzSubject,
    decision: AuthzDecision,
    cache: 'hit' | 'miss',
  ) => void;
}

/** What a (registry, repository, credential) may do, as the registry last said. */
type Grant =
  { readonly allowed: true } | { readonly allowed: false; readonly answer: UpstreamAnswer };

const ANONYMOUS = 'anonymous';
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/** The credential's fingerprint: SHA-256 of the whole Authorization value, or `anonymous`. */
export function credentialFingerprint(authorization: string | undefined): string {
  return authorization === undefined || authorization === ''
    ? ANONYMOUS
    : createHash('sha256').update(authorization).digest('hex');
}

/** The scheme of an Authorization value (`basic`, `bearer`, `none`): all a log may say. */
export function credentialScheme(authorization: string | undefined): string {
  if (authorization === undefined || authorization === '') {
    return 'none';
  }
  const scheme = authorization.split(' ', 1)[0]?.toLowerCase() ?? '';
  return /^[a-z0-9-]{1,20}$/.test(scheme) ? scheme : 'other';
}

export class Authorizer {
  readonly #options: AuthorizerOptions;
  readonly #grants: TtlCache<Grant>;
  readonly #content: TtlCache<true>;
  readonly #probes = new Map<string, Promise<ProbeAnswer>>();
  readonly #closing = new AbortController();

  constructor(options: AuthorizerOptions) {
    this.#options = options;
    const clock = options.clock ?? Date.now;
    this.#grants = new TtlCache(options.maxEntries, options.staleMs, clock);
    this.#content = new TtlCache(options.maxEntries, options.staleMs, clock);
  }

  /** Decides whether the client may have `subject`'s content. */
  async check(subject: AuthzSubject): Promise<AuthzDecision> {
    const cached = this.#cached(subject);
    if (cached !== undefined) {
      this.#options.onDecision?.(subject, cached, 'hit');
      return cached;
    }
    const decision = await this.#ask(subject);
    this.#options.onDecision?.(subject, decision, 'miss');
    return decision;
  }

  /**
   * Remembers that the registry gave `authorization` the manifest `digest` of `repository`
   * (a tag resolved upstream with the client's credentials).
   */
  learnAllowed(
    registry: UpstreamRegistry,
    repository: string,
    authorization: string | undefined,
    digest: Digest | undefined,
  ): void {
    this.#grants.set(
      grantKey(registry, repository, credentialFingerprint(authorization)),
      { allowed: true },
      this.#options.ttlMs,
    );
    if (digest !== undefined) {
      this.#content.set(
        contentKey(registry, repository, digest.toString()),
        true,
        this.#options.ttlMs,
      );
    }
  }

  /**
   * Remembers the digests a manifest of `repository` names: the registry holds them in that
   * repository (it accepts a manifest only when they are there). Call only with a manifest the
   * client was authorized for.
   */
  learnManifest(registry: UpstreamRegistry, repository: string, bytes: Buffer): void {
    for (const digest of referencedDigests(bytes)) {
      this.#content.set(contentKey(registry, repository, digest), true, this.#options.ttlMs);
    }
  }

  /** Abandons probes in flight. */
  close(): void {
    this.#closing.abort();
  }

  /** A decision from the caches alone, or undefined when the registry must be asked. */
  #cached(subject: AuthzSubject): AuthzDecision | undefined {
    const { registry, repository } = subject;
    const held = this.#content.get(contentKey(registry, repository, subject.digest.toString()));
    const fingerprint = credentialFingerprint(subject.authorization);
    const mine = this.#grants.get(grantKey(registry, repository, fingerprint));
    if (mine?.fresh === true && !mine.value.allowed) {
      // The registry refused this credential for the repository, whatever the digest.
      return { kind: 'deny', answer: mine.value.answer };
    }
    if (held?.fresh !== true) {
      return undefined;
    }
    const anonymous = this.#grants.get(grantKey(registry, repository, ANONYMOUS));
    if (anonymous?.fresh === true && anonymous.value.allowed) {
      // A public repository: whatever the client's credential, the registry would serve it.
      return { kind: 'allow' };
    }
    return mine?.fresh === true ? { kind: 'allow' } : undefined;
  }

  /** Asks the registry, one probe at a time per credential and digest. */
  async #ask(subject: AuthzSubject): Promise<AuthzDecision> {
    const { registry, repository, digest } = subject;
    const fingerprint = credentialFingerprint(subject.authorization);
    // Its kind and the size the node knows too: the probe's answer depends on both.
    const key = [
      grantKey(registry, repository, fingerprint),
      digest.toString(),
      subject.kind,
      subject.size ?? '',
    ].join('\n');
    let probe = this.#probes.get(key);
    if (probe === undefined) {
      // Shared by every client asking the same: bounded by the timeout and shutdown, not by
      // the first client staying connected.
      const signal = AbortSignal.any([
        this.#closing.signal,
        AbortSignal.timeout(this.#options.timeoutMs),
      ]);
      probe = this.#options.probe(subject, signal).finally(() => this.#probes.delete(key));
      this.#probes.set(key, probe);
    }
    let answer: ProbeAnswer;
    try {
      answer = await probe;
    } catch (error) {
      return this.#unreachable(subject, describe(error), undefined);
    }
    const { status } = answer;
    if (answer.anything === true) {
      return { kind: 'upstream', answer };
    }
    if (status >= 200 && status < 300 && answer.once !== undefined) {
      // Only as good as what it showed, which the mirror checks against the blob it serves:
      // nothing remembered, lest a page that passed for the content, or another registry
      // where the redirect led, open the repository to anyone.
      return { kind: 'allow', once: answer.once };
    }
    if (status >= 200 && status < 300) {
      this.#grants.set(
        grantKey(registry, repository, fingerprint),
        { allowed: true },
        this.#options.ttlMs,
      );
      this.#content.set(
        contentKey(registry, repository, digest.toString()),
        true,
        this.#options.ttlMs,
      );
      return { kind: 'allow' };
    }
    if (REDIRECTS.has(status)) {
      // The probe could not read the content where the redirect leads (it follows it). A
      // redirect proves nothing else either: some registries send every request on, whatever
      // the credential, so nothing is remembered.
      return { kind: 'upstream', answer };
    }
    if (status === 401 || status === 403) {
      this.#grants.set(
        grantKey(registry, repository, fingerprint),
        { allowed: false, answer },
        this.#options.denyTtlMs,
      );
      return { kind: 'deny', answer };
    }
    if (status === 429 || status >= 500) {
      return this.#unreachable(subject, `the registry answered ${status}`, answer);
    }
    // 404 and the like: the registry says this repository has no such content for this
    // client. Not cached: it says nothing of the repository's other content.
    return { kind: 'deny', answer };
  }

  /** The decision when the registry cannot say: the policy, helped by what was cached. */
  #unreachable(
    subject: AuthzSubject,
    reason: string,
    answer: UpstreamAnswer | undefined,
  ): AuthzDecision {
    const { registry, repository } = subject;
    const { unreachable } = this.#options;
    if (unreachable === 'allow') {
      return { kind: 'allow' };
    }
    // Stale entries count here: they are what the registry said within the stale window.
    const held = this.#content.get(contentKey(registry, repository, subject.digest.toString()));
    if (held !== undefined) {
      const anonymous = this.#grants.get(grantKey(registry, repository, ANONYMOUS));
      if (anonymous?.value.allowed === true) {
        return { kind: 'allow' };
      }
      const fingerprint = credentialFingerprint(subject.authorization);
      const mine = this.#grants.get(grantKey(registry, repository, fingerprint));
      if (unreachable === 'allow-cached' && mine?.value.allowed === true) {
        return { kind: 'allow' };
      }
    }
    return { kind: 'unavailable', reason, answer };
  }
}

function grantKey(registry: UpstreamRegistry, repository: string, fingerprint: string): string {
  return `${registry.host}\n${repository}\n${fingerprint}`;
}

function contentKey(registry: UpstreamRegistry, repository: string, digest: string): string {
  return `${registry.host}\n${repository}\n${digest}`;
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    return error.name === 'TimeoutError' ? 'the registry did not answer in time' : error.message;
  }
  return String(error);
}
