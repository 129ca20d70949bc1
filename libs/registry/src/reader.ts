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
  ): Promise<UpstreamResponse> {
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
  ): Promise<UpstreamResponse> {
    const path = `/v2/${repository}/manifests/${reference}`;
    return this.get(registry, repository, path, { accept: accept.join(', ') }, signal, method);
  }

  /** Why the registry refused this reader with `response` (see `RegistryAuth.refusal`). */
  refusal(registry: UpstreamRegistry, response: Pick<UpstreamResponse, 'headers'>): AuthRefusal {
    return this.#auth.refusal(registry, headerValue(response.headers, 'www-authenticate'));
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
  ): Promise<UpstreamResponse> {
    const send = (authorization: string | undefined): Promise<UpstreamResponse> =>
      this.#client.request({
        registry,
        method,
        path,
        headers: { ...headers, authorization },
        signal,
      });
    const first = await send(this.#auth.current(registry, repository));
    const challenge = headerValue(first.headers, 'www-authenticate');
    if (first.status !== 401 || challenge === undefined) {
      return first;
    }
    first.body.resume();
    const authorization = await this.#auth.answer(registry, repository, challenge, signal);
    return authorization === undefined ? first : send(authorization);
  }
}
