/* lv_open_input / lv_open_output: never block, refuse what is not a file. */
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "lazyvm/fdio.h"
#include "test.h"

static char dir[] = "/tmp/lazyvm-test-fdio-XXXXXX";

static const char *in_dir(const char *name)
{
	static char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return path;
}

static void remove_dir(void)
{
	static const char *const names[] = {"file", "fifo", "sock", "link", "out"};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		unlink(in_dir(names[i]));
	rmdir(dir);
}

/* Each case (its own process) makes its own directory; remove_dir at its end. */
static void make_dir(void)
{
	CHECK(mkdtemp(dir));
}

static void test_input_regular(void)
{
	char why[256] = "";
	struct stat st;
	int fd;

	make_dir();
	fd = open(in_dir("file"), O_WRONLY | O_CREAT, 0600);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, "hello", 5), 5);
	close(fd);
	fd = lv_open_input(in_dir("file"), 0, &st, why, sizeof(why));
	CHECK(fd >= 0);
	CHECK_EQ(st.st_size, 5);
	CHECK_EQ(fcntl(fd, F_GETFL) & O_NONBLOCK, 0); /* cleared again */
	CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	close(fd);
	unlink(in_dir("file"));
	CHECK_EQ(lv_open_input(in_dir("missing"), 0, NULL, why, sizeof(why)), -ENOENT);
	CHECK(strstr(why, "cannot open ") && strstr(why, "No such file or directory"));
	CHECK_EQ(lv_open_input("", 0, NULL, why, sizeof(why)), -EINVAL);
	CHECK(!strcmp(why, "empty file name"));
	CHECK_EQ(lv_open_input(NULL, 0, NULL, why, sizeof(why)), -EINVAL);
	remove_dir();
}

/* Each kind of special file is refused with its name, and nothing blocks:
 * the case's timeout (TEST_CASE_TIMEOUT) would catch an open that waits. */
static void test_input_special_files(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char why[256];
	int s;

	make_dir();
	CHECK_OK(mkfifo(in_dir("fifo"), 0600) < 0 ? -errno : 0);
	CHECK_EQ(lv_open_input(in_dir("fifo"), 0, NULL, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, in_dir("fifo")) && strstr(why, "is a FIFO, not a regular file"));
	CHECK_EQ(lv_open_input(dir, 0, NULL, why, sizeof(why)), -EISDIR);
	CHECK(strstr(why, "is a directory, not a regular file"));
	CHECK_EQ(lv_open_input("/dev/zero", 0, NULL, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "/dev/zero is a character device"));
	CHECK_EQ(lv_open_input("/dev/zero", LV_OPEN_BLOCKDEV, NULL, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "not a regular file or block device"));
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(s >= 0);
	CHECK(strlen(in_dir("sock")) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, in_dir("sock"), strlen(in_dir("sock")) + 1);
	CHECK_OK(bind(s, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0);
	CHECK_EQ(lv_open_input(in_dir("sock"), 0, NULL, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "is a socket"));
	close(s);
	/* A symbolic link to a FIFO is the FIFO. */
	char target[256];
	snprintf(target, sizeof(target), "%s", in_dir("fifo")); /* in_dir's buffer is reused */
	CHECK_OK(symlink(target, in_dir("link")) < 0 ? -errno : 0);
	CHECK_EQ(lv_open_input(in_dir("link"), 0, NULL, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "is a FIFO"));
	remove_dir();
}

static void test_output(void)
{
	char why[256];
	struct stat st;
	int fd;

	make_dir();
	fd = lv_open_output(in_dir("out"), 0600, why, sizeof(why));
	CHECK(fd >= 0);
	CHECK_OK(lv_write_all(fd, "abc", 3));
	CHECK_EQ(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	close(fd);
	fd = lv_open_output(in_dir("out"), 0600, why, sizeof(why)); /* truncates */
	CHECK(fd >= 0);
	CHECK_OK(fstat(fd, &st) < 0 ? -errno : 0);
	CHECK_EQ(st.st_size, 0);
	close(fd);
	CHECK_OK(mkfifo(in_dir("fifo"), 0600) < 0 ? -errno : 0);
	CHECK_EQ(lv_open_output(in_dir("fifo"), 0600, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "is a FIFO"));
	CHECK_EQ(lv_open_output(dir, 0600, why, sizeof(why)), -EISDIR);
	CHECK(strstr(why, "is a directory"));
	CHECK_EQ(lv_open_output(in_dir("no/such/dir"), 0600, why, sizeof(why)), -ENOENT);
	CHECK(strstr(why, "cannot create "));
	CHECK_EQ(lv_open_output("", 0600, why, sizeof(why)), -EINVAL);
	remove_dir();
}

TEST_MAIN(TEST(test_input_regular), TEST(test_input_special_files), TEST(test_output))
