# Included by the hardware-model benchmarks (awk -f bench/lib/median.awk -f -).
# median_of(v, m): the median of v[1..m], v sorted in place (m is 3 or so:
# an insertion sort is enough).
function median_of(v, m,   a, b, t) {
    for (a = 2; a <= m; a++)
        for (b = a; b > 1 && v[b] < v[b - 1]; b--) { t = v[b]; v[b] = v[b - 1]; v[b - 1] = t }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}

# The scripts keep each case's values as arr[case, rep] and its count of
# reps as the global n[case]:
# median_at(arr, c): the median of case c's values
function median_at(arr, c,   a, v) {
    for (a = 1; a <= n[c]; a++) v[a] = arr[c, a] + 0
    return median_of(v, n[c])
}
# rep_ratio(arr, c1, c0): the median over reps of c1's value / c0's in the same rep
function rep_ratio(arr, c1, c0,   a, v) {
    for (a = 1; a <= n[c1] && a <= n[c0]; a++) v[a] = arr[c0, a] > 0 ? arr[c1, a] / arr[c0, a] : 0
    return median_of(v, a - 1)
}
# rep_spread(arr, c1, c0): "lo-hi" of those per-rep ratios
function rep_spread(arr, c1, c0,   a, lo, hi, r) {
    for (a = 1; a <= n[c1] && a <= n[c0]; a++) {
        r = arr[c0, a] > 0 ? arr[c1, a] / arr[c0, a] : 0
        if (a == 1 || r < lo) lo = r
        if (a == 1 || r > hi) hi = r
    }
    return sprintf("%.2f-%.2f", lo, hi)
}
