# syscall-trace.awk: what scripts/bench.d/measure takes from a full strace
# trace of the nginx worker (strace -f -y -s 0 -o FILE -p PID):
#
#   awk -f syscall-trace.awk -v files=DIR [-v prefix=TEXT -v rows=FILE] TRACE
#
# Prints "CALLS FILE_BYTES": CALLS = every system call in the trace, failed
# ones included (what `strace -c` counted before: the worker's calls, all of
# them); FILE_BYTES = the sum of what successful read, readv, pread64, preadv
# and preadv2 calls on files under DIR returned, i.e. the bytes of the served
# files copied into the worker's memory. Reads of sockets and pipes do not
# count: -y shows the path behind each descriptor, "12</dev/shm/.../html/1m.bin>",
# and only paths under DIR are files. With rows, appends
# "PREFIX<TAB>NAME<TAB>CALLS" per system call to that file.
#
# Trace lines (-f: each begins with the pid):
#   123  pread64(12</d/html/1m.bin>, ""..., 8192, 0) = 8192
#   123  epoll_wait(5<anon_inode:[eventpoll]>, <unfinished ...>
#   123  <... epoll_wait resumed>[...], 512, 60000) = 1
#   123  --- SIGALRM {...} ---        123  +++ exited with 0 +++
# A call split over an "unfinished" and a "resumed" line counts once; its
# result is on the resumed line. Plain POSIX awk: the guest may have mawk.

BEGIN {
    reads["read"] = reads["readv"] = reads["pread64"] = reads["preadv"] = reads["preadv2"] = 1
    file_prefix = "<" files "/"
    calls = 0
    file_bytes = 0
}

# The value a completed call returned, if it succeeded ("= 8192" at the end
# of the line; failures go on with the error name: "= -1 EAGAIN (...)").
function returned(line) {
    if (match(line, /= [0-9]+$/))
        return substr(line, RSTART + 2) + 0
    return -1
}

# Whether the arguments (the text after "name(") begin with a descriptor of
# one of the served files.
function on_served_file(arguments) {
    sub(/^[0-9]+/, "", arguments)
    return index(arguments, file_prefix) == 1
}

{
    pid = ""
    if ($1 ~ /^[0-9]+$/) {
        pid = $1
        sub(/^[0-9]+ +/, "")
    }
}

/^(---|\+\+\+) / { next }

/^<\.\.\. [a-z_0-9]+ resumed>/ {
    if (pending[pid]) {
        value = returned($0)
        if (value > 0)
            file_bytes += value
    }
    pending[pid] = 0
    next
}

match($0, /^[a-z_0-9]+\(/) {
    name = substr($0, 1, RLENGTH - 1)
    count[name]++
    calls++
    counted = (name in reads) && on_served_file(substr($0, RLENGTH + 1))
    if ($0 ~ /<unfinished \.\.\.>$/) {
        pending[pid] = counted
        next
    }
    if (counted) {
        value = returned($0)
        if (value > 0)
            file_bytes += value
    }
}

END {
    if (rows != "")
        for (name in count)
            print prefix "\t" name "\t" count[name] >>rows
    print calls, file_bytes
}
