/**
 * Reads from a registry with a service's own credentials (a docker config, not a client's):
 * anonymous or Basic first, then the registry's token flow when it challenges. The seed server
 * reads blobs this way, the watcher manifests.
 */
import type { Digest } from '@shoal/proto';

import type { UpstreamClient, UpstreamResponse } from './client.js';
import { headerValue } from './client.js';
import type { AuthRefusal, RegistryAuth } from './credentials.js';
import type { UpstreamRegistry } from './registries.js';

/** A registry's answer to a reader, with the challenge behind it. */
export interface ReaderResponse extends UpstreamResponse {
  /**
   * The 401 challenge that decided this answer: the final answer's own, else the one the
   * reader answered (a token realm's refusal comes back as a 403 without one, and it still
   * says why: a realm the credentials may not go to, for one). Undefined when none was met.
   */
  readonly challenge: string | undefined;
}

export class RegistryReader {
  readonly #client: UpstreamClient;
  readonly #auth: RegistryAuth;

  constructor(client: UpstreamClient, auth: RegistryAuth) {
    this.#client = client;
    this.#auth = auth;
  }

  /** GETs a blob. The caller reads or destroys the body. */
  fetchBlob(
    registry: UpstreamRegistry,
    repository: string,
    digest: Digest,
    signal: AbortSignal,
  ): Promise<ReaderResponse> {
    return this.get(
      registry,
      repository,
      `/v2/${repository}/blobs/${digest.toString()}`,
      {},
      signal,
    );
  }

  /** GETs (or HEADs) a manifest by tag or digest, accepting the given media types. */
  fetchManifest(
    registry: UpstreamRegistry,
    repository: string,
    reference: string,
    accept: readonly string[],
    signal: AbortSignal,
    method: 'GET' | 'HEAD' = 'GET',
  ): Promise<ReaderResponse> {
    const path = `/v2/${repository}/manifests/${reference}`;
    return this.get(registry, repository, path, { accept: accept.join(', ') }, signal, method);
  }

  /**
   * Why the registry refused this reader with `response` (see `RegistryAuth.refusal`), from
   * the challenge it met, not only the final answer's headers.
   */
  refusal(registry: UpstreamRegistry, response: Pick<ReaderResponse, 'challenge'>): AuthRefusal {
    return this.#auth.refusal(registry, response.challenge);
  }

  /**
   * Sends a request for `repository`; answers a 401 challenge once. Throws a `RealmError` when
   * the registry's token realm fails (see `RegistryAuth.answer`).
   */
  async get(
    registry: UpstreamRegistry,
    repository: string,
    path: string,
    headers: Readonly<Record<string, string>>,
    signal: AbortSignal,
    method: 'GET' | 'HEAD' = 'GET',
  ): Promise<ReaderResponse> {
    const send = async (authorization: string | undefined): Promise<ReaderResponse> => {
      const response = await this.#client.request({
        registry,
        method,
        path,
        headers: { ...headers, authorization },
        signal,
      });
      return { ...response, challenge: headerValue(response.headers, 'www-authenticate') };
    };
    const first = await send(this.#auth.current(registry, repository));
    const { challenge } = first;
    if (first.status !== 401 || challenge === undefined) {
      return first;
    }
    first.body.resume();
    const authorization = await this.#auth.answer(registry, repository, challenge, signal);
    if (authorization === undefined) {
      return first;
    }
    const second = await send(authorization);
    return second.challenge === undefined ? { ...second, challenge } : second;
  }
}
