/**
 * Reads what a preheat needs from the registry: a tag's current digest, and the blobs
 * (configs and layers) behind a manifest. An image index fans out to its platform manifests,
 * filtered by the wanted platforms; every manifest read is checked against its digest.
 */
import {
  DigestHasher,
  parseDigest,
  parseImageReference,
  type Digest,
  type ImageReference,
} from '@shoal/proto';
import {
  headerValue,
  readAnswer,
  readLimited,
  RealmError,
  refusalAdvice,
  type ReaderResponse,
  type RegistryReader,
  type UpstreamRegistry,
} from '@shoal/registry';
import { ShoalError } from '@shoal/runtime';
import { z } from 'zod';

import { platformWanted } from './platforms.js';

const INDEX_TYPES = new Set([
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
]);
const MANIFEST_TYPES = new Set([
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
]);
const ACCEPT = [...INDEX_TYPES, ...MANIFEST_TYPES];
/** An index of indexes is legal; this bounds how deep it is followed. */
const MAX_DEPTH = 2;

const descriptor = z.looseObject({
  mediaType: z.string().optional(),
  digest: z.string(),
  size: z.int().nonnegative(),
  platform: z
    .looseObject({
      os: z.string().optional(),
      architecture: z.string().optional(),
      variant: z.string().optional(),
    })
    .optional(),
});
const manifestBody = z.looseObject({
  schemaVersion: z.number().optional(),
  mediaType: z.string().optional(),
  config: descriptor.optional(),
  layers: z.array(descriptor).optional(),
  manifests: z.array(descriptor).optional(),
});

/** Where the watcher's registry credentials are set. */
const WATCHER_CREDENTIALS = {
  dockerConfig: 'SHOAL_WATCHER_DOCKER_CONFIG',
  trustedRealms: 'SHOAL_WATCHER_TRUSTED_REALMS',
} as const;

/**
 * A layer clients fetch from its own `urls`, never from the registry (Windows base layers:
 * Docker's foreign layers, OCI's non-distributable ones): the registry does not hold it, so a
 * seed of it could only fail. `urls` on another layer are only other places to find it.
 */
function nonDistributable(layer: z.infer<typeof descriptor>): boolean {
  return /\.foreign\.|\.nondistributable\./.test(layer.mediaType ?? '');
}

export class ResolveError extends ShoalError<
  | 'UNKNOWN_REGISTRY'
  | 'NOT_FOUND'
  | 'REGISTRY_ANSWER'
  | 'UNAUTHORIZED'
  | 'BAD_MANIFEST'
  | 'TOO_LARGE'
> {
  override readonly name = 'ResolveError';
}

/** The blobs of one preheat: every wanted platform's config and layers, once each. */
export interface ResolvedImage {
  readonly registry: UpstreamRegistry;
  readonly repository: string;
  readonly digest: Digest;
  /** The platform manifests read (the manifest itself when it is not an index). */
  readonly manifests: readonly string[];
  readonly blobs: readonly { readonly digest: string; readonly size: number }[];
}

export interface ResolverSettings {
  readonly registries: readonly UpstreamRegistry[];
  readonly maxManifestBytes: number;
  readonly timeoutMs: number;
  /**
   * Told each time a registry refuses the watcher (401, 403): its host, the status, and the
   * operator's fix for the cause.
   */
  readonly onRefused?: (registry: string, status: number, advice: string) => void;
}

export class ImageResolver {
  readonly #reader: RegistryReader;
  readonly #settings: ResolverSettings;
  readonly #registries: ReadonlyMap<string, UpstreamRegistry>;

  constructor(reader: RegistryReader, settings: ResolverSettings) {
    this.#reader = reader;
    this.#settings = settings;
    this.#registries = new Map(settings.registries.map((r) => [r.host, r]));
  }

  /** The configured registry a host names: by its name, or by its URL's host. */
  registryFor(host: string): UpstreamRegistry | undefined {
    return (
      this.#registries.get(host) ??
      this.#settings.registries.find((r) => r.url.host === host.toLowerCase())
    );
  }

  /** Parses an image reference whose registry is configured. */
  parse(image: string): { reference: ImageReference; registry: UpstreamRegistry } {
    let reference: ImageReference;
    try {
      reference = parseImageReference(image);
    } catch (error) {
      throw new ResolveError('BAD_MANIFEST', 400, (error as Error).message);
    }
    const registry = this.registryFor(reference.registry);
    if (registry === undefined) {
      throw new ResolveError(
        'UNKNOWN_REGISTRY',
        400,
        `registry ${reference.registry} is not in SHOAL_WATCHER_REGISTRIES`,
      );
    }
    return { reference, registry };
  }

  /** The digest an image reference names now: its own digest, or its tag's current one. */
  async currentDigest(
    registry: UpstreamRegistry,
    reference: ImageReference,
    signal?: AbortSignal,
  ): Promise<Digest> {
    if (reference.digest !== undefined) {
      return reference.digest;
    }
    const tag = reference.tag ?? 'latest';
    const response = await this.#fetchManifest(
      registry,
      reference.repository,
      tag,
      ACCEPT,
      this.#signal(signal),
      'HEAD',
    );
    response.body.resume();
    const header = headerValue(response.headers, 'docker-content-digest');
    if (response.status === 200 && header !== undefined) {
      return parseDigest(header);
    }
    if (response.status === 404) {
      throw new ResolveError('NOT_FOUND', 404, `${reference.repository}:${tag} does not exist`);
    }
    this.#checkRefused(registry, reference.repository, response);
    if (response.status !== 200) {
      throw new ResolveError('REGISTRY_ANSWER', 502, `the registry answered ${response.status}`);
    }
    // No digest header: read the manifest and hash it.
    return (await this.#readManifest(registry, reference.repository, tag, signal)).digest;
  }

  /** Every wanted blob behind a manifest or index. */
  async resolve(
    registry: UpstreamRegistry,
    repository: string,
    digest: Digest,
    platforms: readonly string[],
    signal?: AbortSignal,
  ): Promise<ResolvedImage> {
    const manifests: string[] = [];
    const blobs = new Map<string, number>();
    const visit = async (target: Digest, depth: number): Promise<void> => {
      const { body, mediaType } = await this.#readManifest(
        registry,
        repository,
        target.toString(),
        signal,
        target,
      );
      if (body.manifests !== undefined || INDEX_TYPES.has(mediaType ?? '')) {
        if (depth >= MAX_DEPTH) {
          throw new ResolveError(
            'BAD_MANIFEST',
            502,
            `${target.toString()}: indexes nest too deep`,
          );
        }
        for (const entry of body.manifests ?? []) {
          if (platformWanted(entry.platform, platforms)) {
            await visit(parseDigest(entry.digest), depth + 1);
          }
        }
        return;
      }
      manifests.push(target.toString());
      for (const blob of [
        ...(body.config === undefined ? [] : [body.config]),
        ...(body.layers ?? []).filter((layer) => !nonDistributable(layer)),
      ]) {
        parseDigest(blob.digest);
        blobs.set(blob.digest, blob.size);
      }
    };
    await visit(digest, 0);
    if (manifests.length === 0) {
      throw new ResolveError(
        'NOT_FOUND',
        404,
        `${digest.toString()} has no manifest for ${platforms.join(', ') || 'any platform'}`,
      );
    }
    return {
      registry,
      repository,
      digest,
      manifests,
      blobs: [...blobs].map(([blob, size]) => ({ digest: blob, size })),
    };
  }

  /**
   * Throws the operator's fix for the cause when the registry refused the watcher: a permanent
   * failure (no retry brings credentials), counted.
   */
  #checkRefused(
    registry: UpstreamRegistry,
    repository: string,
    response: Pick<ReaderResponse, 'status' | 'challenge'>,
  ): void {
    const { status } = response;
    if (status !== 401 && status !== 403) {
      return;
    }
    const advice = refusalAdvice(
      registry.host,
      this.#reader.refusal(registry, response),
      WATCHER_CREDENTIALS,
    );
    this.#settings.onRefused?.(registry.host, status, advice);
    throw new ResolveError(
      'UNAUTHORIZED',
      502,
      `the registry refused the watcher (${status}) for ${repository}: ${advice}`,
    );
  }

  /**
   * Reads a manifest; a token realm that fails is the registry failing (retried as its 5xx
   * is), not a refusal of the watcher's credentials.
   */
  async #fetchManifest(
    ...args: Parameters<RegistryReader['fetchManifest']>
  ): Promise<ReaderResponse> {
    try {
      return await this.#reader.fetchManifest(...args);
    } catch (error) {
      if (error instanceof RealmError) {
        throw new ResolveError('REGISTRY_ANSWER', 502, error.message, { cause: error });
      }
      throw error;
    }
  }

  async #readManifest(
    registry: UpstreamRegistry,
    repository: string,
    reference: string,
    signal: AbortSignal | undefined,
    expected?: Digest,
  ): Promise<{
    body: z.infer<typeof manifestBody>;
    mediaType: string | undefined;
    digest: Digest;
  }> {
    const response = await this.#fetchManifest(
      registry,
      repository,
      reference,
      ACCEPT,
      this.#signal(signal),
    );
    if (response.status !== 200) {
      const answer = await readAnswer(response);
      this.#checkRefused(registry, repository, {
        status: answer.status,
        challenge: response.challenge,
      });
      throw new ResolveError(
        answer.status === 404 ? 'NOT_FOUND' : 'REGISTRY_ANSWER',
        answer.status === 404 ? 404 : 502,
        `${repository}@${reference}: the registry answered ${answer.status}`,
      );
    }
    const limit = this.#settings.maxManifestBytes;
    const bytes = await readLimited(
      response.body,
      limit,
      () => new ResolveError('TOO_LARGE', 502, `a manifest is larger than ${limit} bytes`),
    );
    const hasher = new DigestHasher(expected?.algorithm ?? 'sha256');
    hasher.update(bytes);
    const digest = hasher.digest();
    if (expected !== undefined && digest.toString() !== expected.toString()) {
      throw new ResolveError(
        'BAD_MANIFEST',
        502,
        `${reference}: the manifest does not match its digest`,
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(bytes.toString('utf8'));
    } catch {
      throw new ResolveError('BAD_MANIFEST', 502, `${reference}: the manifest is not JSON`);
    }
    const parsed = manifestBody.safeParse(json);
    if (!parsed.success) {
      throw new ResolveError('BAD_MANIFEST', 502, `${reference}: not an image manifest or index`);
    }
    const mediaType = parsed.data.mediaType ?? headerValue(response.headers, 'content-type');
    if (
      parsed.data.schemaVersion === 1 ||
      (mediaType ?? '').startsWith('application/vnd.docker.distribution.manifest.v1')
    ) {
      // Read as an image manifest it has neither config nor layers: the preheat would succeed
      // having warmed nothing. containerd no longer pulls these either.
      throw new ResolveError(
        'BAD_MANIFEST',
        502,
        `${repository}@${reference}: a Docker schema 1 manifest, which Shoal does not preheat: push the image again with a current client`,
      );
    }
    return { body: parsed.data, mediaType, digest };
  }

  #signal(signal: AbortSignal | undefined): AbortSignal {
    const timeout = AbortSignal.timeout(this.#settings.timeoutMs);
    return signal === undefined ? timeout : AbortSignal.any([signal, timeout]);
  }
}
