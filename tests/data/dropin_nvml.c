/* A minimal drop-in libnvidia-ml.so.1 (one GPU) proving GFD loads NVML by the ordinary library search. */
#include <string.h>

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;

int nvmlInitWithFlags(unsigned int flags) { (void)flags; return 0; }
int nvmlShutdown(void) { return 0; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 1; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, void **h) { *h = (void *)(0x100 + (unsigned long)i); return 0; }
int nvmlDeviceGetName(void *h, char *buf, unsigned int n) { (void)h; strncpy(buf, "Drop-in GPU (test)", n); return 0; }
int nvmlDeviceGetMemoryInfo(void *h, nvmlMemory_t *m) { (void)h; m->total = 1024ULL << 20; m->free = m->total; m->used = 0; return 0; }
int nvmlDeviceGetCudaComputeCapability(void *h, int *maj, int *min) { (void)h; *maj = 9; *min = 0; return 0; }
int nvmlSystemGetDriverVersion(char *buf, unsigned int n) { strncpy(buf, "999.1.2", n); return 0; }
int nvmlSystemGetCudaDriverVersion(int *v) { *v = 13010; return 0; }
