// hash.wgsl (prelude): the counter-based generator's 32-bit mixer (lowbias32 by C. Wellons),
// plain u32 arithmetic: the same bits on every backend. Used by dropout and token sampling.

fn mix(v: u32) -> u32 {
    var h = v;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}
