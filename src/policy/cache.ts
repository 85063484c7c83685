/**
 * A bounded LRU cache keyed on SQL text. Entries form a doubly linked list in
 * recency order next to a Map for lookup; a hit relinks one entry (a few pointer
 * writes) and never touches the Map, so hits stay far below a microsecond even
 * when one key is hot. The cache is bounded by entry count and by total key
 * length, so a few huge queries cannot hold on to unbounded memory.
 */
interface Entry<V> {
  key: string;
  value: V;
  newer: Entry<V> | undefined;
  older: Entry<V> | undefined;
}

export class LruCache<V> {
  readonly #map = new Map<string, Entry<V>>();
  #newest: Entry<V> | undefined;
  #oldest: Entry<V> | undefined;
  #chars = 0;

  /**
   * @param capacity maximum number of entries (0 disables the cache)
   * @param maxChars maximum total length of the keys held
   */
  constructor(
    readonly capacity: number,
    readonly maxChars: number = 32 * 1024 * 1024,
  ) {}

  get size(): number {
    return this.#map.size;
  }

  get(key: string): V | undefined {
    const entry = this.#map.get(key);
    if (entry === undefined) return undefined;
    if (entry !== this.#newest) {
      this.#unlink(entry);
      this.#pushNewest(entry);
    }
    return entry.value;
  }

  set(key: string, value: V): void {
    if (this.capacity <= 0 || key.length > this.maxChars) return;
    const existing = this.#map.get(key);
    if (existing !== undefined) {
      existing.value = value;
      this.get(key);
      return;
    }
    const entry: Entry<V> = { key, value, newer: undefined, older: undefined };
    this.#map.set(key, entry);
    this.#pushNewest(entry);
    this.#chars += key.length;
    while (this.#map.size > this.capacity || this.#chars > this.maxChars) this.#evictOldest();
  }

  clear(): void {
    this.#map.clear();
    this.#newest = undefined;
    this.#oldest = undefined;
    this.#chars = 0;
  }

  /** Keys from most to least recently used (for tests). */
  keys(): string[] {
    const out: string[] = [];
    for (let e = this.#newest; e !== undefined; e = e.older) out.push(e.key);
    return out;
  }

  #evictOldest(): void {
    const entry = this.#oldest;
    if (entry === undefined) return;
    this.#unlink(entry);
    this.#map.delete(entry.key);
    this.#chars -= entry.key.length;
  }

  #unlink(entry: Entry<V>): void {
    if (entry.newer) entry.newer.older = entry.older;
    else this.#newest = entry.older;
    if (entry.older) entry.older.newer = entry.newer;
    else this.#oldest = entry.newer;
    entry.newer = undefined;
    entry.older = undefined;
  }

  #pushNewest(entry: Entry<V>): void {
    entry.older = this.#newest;
    entry.newer = undefined;
    if (this.#newest) this.#newest.newer = entry;
    this.#newest = entry;
    if (this.#oldest === undefined) this.#oldest = entry;
  }
}
