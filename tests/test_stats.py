"""Memory as the stats payload and the benchmarks read it: RSS split into anonymous and file-backed pages.

Why a test: the split is how a reader tells the daemon's own memory from library pages whose count moves with the
host's page cache (edge.stats.memory_mb); a parser that dropped a field would make the two benches disagree.
"""

from edge.stats import memory_mb, proc_memory


def test_memory_is_read_split_into_anonymous_and_file_backed():
    status = "Name:\tpython\nVmHWM:\t  174948 kB\nVmRSS:\t  163552 kB\nRssAnon:\t   53892 kB\nRssFile:\t  109660 kB\n"
    assert memory_mb(status) == {"VmHWM": 170.8, "VmRSS": 159.7, "RssAnon": 52.6, "RssFile": 107.1}
    assert memory_mb("Name:\tpython\nVmRSS:\n") == {}  # a field without a value is left out
    mine = proc_memory()
    assert mine["VmHWM"] >= mine["VmRSS"] > 0 and abs(mine["RssAnon"] + mine["RssFile"] - mine["VmRSS"]) < 1
    assert proc_memory(2**22 + 12345) == {}  # no such process
