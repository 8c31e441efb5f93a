# Included by the hardware-model benchmarks (awk -f bench/lib/median.awk -f -).
# median_of(v, m): the median of v[1..m], v sorted in place (m is 3 or so:
# an insertion sort is enough).
function median_of(v, m,   a, b, t) {
    for (a = 2; a <= m; a++)
        for (b = a; b > 1 && v[b] < v[b - 1]; b--) { t = v[b]; v[b] = v[b - 1]; v[b - 1] = t }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}
