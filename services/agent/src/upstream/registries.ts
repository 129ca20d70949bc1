/** Which upstream a mirror request is for: only configured registries are ever contacted. */
import { MirrorError } from '../mirror/errors.js';
import { canonicalRegistryHost, type UpstreamRegistry } from '@shoal/registry';

export class RegistryTable {
  readonly #byHost: ReadonlyMap<string, UpstreamRegistry>;
  readonly #defaultHost: string | undefined;

  constructor(registries: readonly UpstreamRegistry[], defaultHost: string | undefined) {
    this.#byHost = new Map(registries.map((r) => [r.host, r]));
    this.#defaultHost = defaultHost === undefined ? undefined : canonicalRegistryHost(defaultHost);
  }

  /** The registries, in configuration order. */
  get registries(): readonly UpstreamRegistry[] {
    return [...this.#byHost.values()];
  }

  /** The mirrored registry called `host`, if there is one. */
  get(host: string): UpstreamRegistry | undefined {
    return this.#byHost.get(canonicalRegistryHost(host));
  }

  /**
   * The registry named by containerd's `ns` query parameter, or the default registry when
   * there is none (docker's `registry-mirrors`). Anything unlisted is refused.
   */
  resolve(ns: string | undefined): UpstreamRegistry {
    const host = ns ?? this.#defaultHost;
    if (host === undefined) {
      throw new MirrorError('DENIED', 403, 'no ns= given and no default registry is configured');
    }
    const registry = this.#byHost.get(canonicalRegistryHost(host));
    if (registry === undefined) {
      throw new MirrorError('DENIED', 403, `registry "${host.slice(0, 255)}" is not mirrored here`);
    }
    return registry;
  }
}
