/**
 * Blob reads from the origin registry with the seed's own credentials: anonymous or Basic
 * first, then the registry's token flow when it challenges.
 */
import type { Digest } from '@shoal/proto';
import {
  headerValue,
  type RegistryAuth,
  type UpstreamClient,
  type UpstreamRegistry,
  type UpstreamResponse,
} from '@shoal/registry';

export class OriginClient {
  readonly #client: UpstreamClient;
  readonly #auth: RegistryAuth;

  constructor(client: UpstreamClient, auth: RegistryAuth) {
    this.#client = client;
    this.#auth = auth;
  }

  /** GETs a blob; answers a 401 challenge once. The caller reads or destroys the body. */
  async fetchBlob(
    registry: UpstreamRegistry,
    repository: string,
    digest: Digest,
    signal: AbortSignal,
  ): Promise<UpstreamResponse> {
    const path = `/v2/${repository}/blobs/${digest.toString()}`;
    const send = (authorization: string | undefined): Promise<UpstreamResponse> =>
      this.#client.request({ registry, method: 'GET', path, headers: { authorization }, signal });
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
