/*
 * A thread pool whose threads synchronise often: the main thread hands out
 * BATCHES batches of TASKS small tasks to THREADS workers through one
 * mutex-protected queue and waits (condition variable) until each batch is
 * done. Each task is WORK iterations of integer arithmetic (a few
 * microseconds). This is the shape of a compressor's or a build tool's
 * worker pool, made to wait on futexes as often as possible.
 *
 * usage: threadpool THREADS BATCHES TASKS WORK
 * prints a checksum, so a wrong result is seen, not only a slow one.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER;
static pthread_cond_t batch_done = PTHREAD_COND_INITIALIZER;
static long queued, unfinished, work;
static int stopping;
static uint64_t checksum;

static uint64_t task(long seed)
{
	uint64_t x = (uint64_t)seed * 2654435761u + 1;

	for (long i = 0; i < work; i++)
		x = x * 6364136223846793005u + 1442695040888963407u;
	return x;
}

static void *worker(void *unused)
{
	(void)unused;
	pthread_mutex_lock(&lock);
	for (;;) {
		while (queued == 0 && !stopping)
			pthread_cond_wait(&work_ready, &lock);
		if (queued == 0)
			break;
		long seed = queued--;
		pthread_mutex_unlock(&lock);
		uint64_t result = task(seed);
		pthread_mutex_lock(&lock);
		checksum += result;
		if (--unfinished == 0)
			pthread_cond_signal(&batch_done);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: threadpool THREADS BATCHES TASKS WORK\n");
		return 2;
	}
	int threads = atoi(argv[1]);
	long batches = atol(argv[2]), tasks = atol(argv[3]);
	work = atol(argv[4]);
	pthread_t *ids = calloc((size_t)threads, sizeof(*ids));

	if (ids == NULL || threads < 1)
		return 2;
	for (int i = 0; i < threads; i++)
		if (pthread_create(&ids[i], NULL, worker, NULL) != 0)
			return 1;
	for (long b = 0; b < batches; b++) {
		pthread_mutex_lock(&lock);
		queued = unfinished = tasks;
		pthread_cond_broadcast(&work_ready);
		while (unfinished > 0)
			pthread_cond_wait(&batch_done, &lock);
		pthread_mutex_unlock(&lock);
	}
	pthread_mutex_lock(&lock);
	stopping = 1;
	pthread_cond_broadcast(&work_ready);
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < threads; i++)
		pthread_join(ids[i], NULL);
	printf("%016llx\n", (unsigned long long)checksum);
	return 0;
}
