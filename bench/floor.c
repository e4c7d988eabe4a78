/*
 * The safe floor of a retention pass: the least any deleter that makes ocrd's per-file checks
 * can do, as a peer in the bench (bench/floor.py builds it, bench/sections/clean.py runs it).
 *
 *     floor [--prefix=P] [--max-age-s=S] ROOT
 *
 * Walks ROOT (one filesystem, symlinks never followed): each directory is opened relative to
 * its parent's fd (O_DIRECTORY|O_NOFOLLOW), read whole with readdir (getdents), its entries
 * sorted by inode number and fstatat'ed (AT_SYMLINK_NOFOLLOW). A regular file is due if its
 * name starts with P or its mtime is more than S seconds before the start of the run (what
 * `find -mmin +N` judges, N = S / 60). Per due file:
 *
 *     openat(dirfd, name, O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC)
 *     fstat            still a regular file, same dev, inode, size and mtime as walked
 *     fcntl(F_SETLEASE, F_WRLCK)   nobody else has it open; EAGAIN: keep the file
 *     unlinkat(dirfd, name, 0)
 *     close            (lets go of the lease)
 *
 * SIGIO is ignored before the first lease (a broken lease is signalled with it, and its
 * default action ends the process). Prints its counts on stdout; exits 0 when every due file
 * was either deleted or kept for a reason it names, 1 when a system call failed unexpectedly,
 * 2 on a usage error, 3 when the filesystem refuses leases (the floor is not defined there).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct entry {
    ino_t ino;
    char *name;
};

static const char *prefix = NULL;
static size_t prefix_len = 0;
static int64_t limit_ns = 0; /* a file whose mtime is before this is due */
static dev_t root_dev;
static unsigned long deleted, held, changed, vanished, failed;
static int no_leases;

static int by_inode(const void *a, const void *b)
{
    ino_t x = ((const struct entry *)a)->ino, y = ((const struct entry *)b)->ino;
    return (x > y) - (x < y);
}

static int64_t ns_of(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void delete_one(int dirfd, const char *name, const struct stat *walked)
{
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            vanished++;
        else if (errno == ELOOP)
            changed++; /* became a symlink */
        else {
            failed++;
            fprintf(stderr, "floor: open %s: %s\n", name, strerror(errno));
        }
        return;
    }
    struct stat now;
    if (fstat(fd, &now) != 0) {
        failed++;
        fprintf(stderr, "floor: fstat %s: %s\n", name, strerror(errno));
    } else if (!S_ISREG(now.st_mode) || now.st_dev != walked->st_dev ||
               now.st_ino != walked->st_ino || now.st_size != walked->st_size ||
               ns_of(now.st_mtim) != ns_of(walked->st_mtim)) {
        changed++;
    } else if (fcntl(fd, F_SETLEASE, F_WRLCK) != 0) {
        if (errno == EAGAIN) {
            held++;
        } else {
            failed++;
            no_leases = 1;
            fprintf(stderr, "floor: lease %s: %s\n", name, strerror(errno));
        }
    } else if (unlinkat(dirfd, name, 0) != 0) {
        if (errno == ENOENT)
            vanished++;
        else {
            failed++;
            fprintf(stderr, "floor: unlink %s: %s\n", name, strerror(errno));
        }
    } else {
        deleted++;
    }
    close(fd);
}

/* Takes ownership of dirfd. */
static void walk(int dirfd)
{
    DIR *dir = fdopendir(dirfd);
    if (dir == NULL) {
        failed++;
        fprintf(stderr, "floor: fdopendir: %s\n", strerror(errno));
        close(dirfd);
        return;
    }
    size_t n = 0, cap = 256;
    struct entry *entries = malloc(cap * sizeof *entries);
    int err = entries == NULL ? ENOMEM : 0;
    while (err == 0) {
        errno = 0;
        struct dirent *d = readdir(dir);
        if (d == NULL) {
            err = errno;
            break;
        }
        if (d->d_name[0] == '.' &&
            (d->d_name[1] == '\0' || (d->d_name[1] == '.' && d->d_name[2] == '\0')))
            continue;
        if (n == cap) {
            struct entry *grown = realloc(entries, 2 * cap * sizeof *entries);
            if (grown == NULL) {
                err = ENOMEM;
                break;
            }
            entries = grown;
            cap *= 2;
        }
        entries[n].ino = d->d_ino;
        entries[n].name = strdup(d->d_name);
        if (entries[n].name == NULL) {
            err = ENOMEM;
            break;
        }
        n++;
    }
    if (err != 0) {
        /* A directory not read whole is not judged: its files stay. */
        failed++;
        fprintf(stderr, "floor: readdir: %s\n", strerror(err));
        for (size_t i = 0; i < n; i++)
            free(entries[i].name);
        n = 0;
    }
    if (entries != NULL) {
        qsort(entries, n, sizeof *entries, by_inode);
        for (size_t i = 0; i < n; i++) {
            const char *name = entries[i].name;
            struct stat st;
            if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                if (errno != ENOENT) {
                    failed++;
                    fprintf(stderr, "floor: fstatat %s: %s\n", name, strerror(errno));
                }
            } else if (S_ISDIR(st.st_mode)) {
                if (st.st_dev == root_dev) { /* one filesystem */
                    int sub = openat(dirfd, name,
                                     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                    if (sub < 0) {
                        failed++;
                        fprintf(stderr, "floor: open dir %s: %s\n", name, strerror(errno));
                    } else {
                        struct stat opened;
                        if (fstat(sub, &opened) == 0 && opened.st_dev == st.st_dev &&
                            opened.st_ino == st.st_ino) {
                            walk(sub);
                        } else {
                            changed++; /* swapped since the fstatat: not walked */
                            close(sub);
                        }
                    }
                }
            } else if (S_ISREG(st.st_mode) &&
                       ((prefix != NULL && strncmp(name, prefix, prefix_len) == 0) ||
                        ns_of(st.st_mtim) < limit_ns)) {
                delete_one(dirfd, name, &st);
            }
            free(entries[i].name);
        }
        free(entries);
    }
    closedir(dir); /* closes dirfd */
}

int main(int argc, char **argv)
{
    const char *root = NULL;
    long long max_age_s = 30LL * 86400;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--prefix=", 9) == 0) {
            prefix = argv[i] + 9;
            prefix_len = strlen(prefix);
        } else if (strncmp(argv[i], "--max-age-s=", 12) == 0) {
            char *end;
            max_age_s = strtoll(argv[i] + 12, &end, 10);
            if (*end != '\0' || max_age_s < 0) {
                fprintf(stderr, "floor: bad %s\n", argv[i]);
                return 2;
            }
        } else if (root == NULL && argv[i][0] != '-') {
            root = argv[i];
        } else {
            fprintf(stderr, "usage: floor [--prefix=P] [--max-age-s=S] ROOT\n");
            return 2;
        }
    }
    if (root == NULL) {
        fprintf(stderr, "usage: floor [--prefix=P] [--max-age-s=S] ROOT\n");
        return 2;
    }
    if (signal(SIGIO, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "floor: cannot ignore SIGIO: %s\n", strerror(errno));
        return 1;
    }
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    limit_ns = ns_of(start) - (int64_t)max_age_s * 1000000000;
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "floor: %s: %s\n", root, strerror(errno));
        return 1;
    }
    root_dev = st.st_dev;
    walk(fd);
    printf("deleted %lu held %lu changed %lu vanished %lu failed %lu\n", deleted, held, changed,
           vanished, failed);
    if (no_leases)
        return 3;
    return failed ? 1 : 0;
}
