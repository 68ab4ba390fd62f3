/* attnkit C ABI: every public mechanism of attnkit behind plain C99 functions, for C and for any
 * language with a C foreign-function interface (Rust, Go, Julia, C#, Python ctypes, ...).
 *
 * Conventions
 *  - Every function that can fail returns an attnkit_status: ATTNKIT_OK (0) or an error code. No C++
 *    exception ever crosses this boundary and nothing aborts; attnkit_last_error() gives the message of
 *    the most recent failed call on the calling thread (each call clears it first). Messages name the
 *    argument ("q", "opts.scale", "layout", ...) and what was expected.
 *  - Tensors are borrowed attnkit_tensor views of caller memory (data pointer, dtype, device, rank, int64
 *    shape and strides in ELEMENTS). attnkit never frees them, never keeps them past the call and never
 *    writes a tensor passed as an input. Optional tensors are passed as NULL.
 *  - Options structs begin with struct_size = sizeof(the struct the caller compiled against). Fill them
 *    with the attnkit_*_options_default() inline functions below (or, from another language, set
 *    struct_size and the documented defaults yourself). Fields are only ever appended, so a program built
 *    against an older header keeps working with a newer library (ATTNKIT_ABI_VERSION counts breaks).
 *  - Layouts and DLA caches are opaque handles with create/destroy. A NULL, destroyed or foreign handle is
 *    reported as ATTNKIT_ERROR_VALUE (handles are tracked), never a crash. destroy(NULL) is a no-op.
 *    Threads: any function may be called from any thread; a layout may be read by several calls at once,
 *    a DLA cache is advanced by one call at a time, and no handle may be destroyed while a call uses it.
 *  - Semantics of each mechanism: the README's semantics table (attnkit.reference implements them in
 *    float64 NumPy); the C++ headers (attention.h, block_sparse.h, linear.h, dla.h) document each field.
 */
#ifndef ATTNKIT_C_API_H
#define ATTNKIT_C_API_H

#include <stddef.h>
#include <stdint.h>

#include "attnkit/export.h"
#include "attnkit/version.h"

/* Incremented whenever a change breaks binary compatibility of this header (never for appended fields
 * or new functions). attnkit_abi_version() returns the library's value. */
#define ATTNKIT_ABI_VERSION 1


#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------ status codes */

/* One code per attnkit::ErrorKind (C++), plus OK. */
typedef int32_t attnkit_status;
enum {
  ATTNKIT_OK = 0,
  ATTNKIT_ERROR_VALUE = 1,     /* bad shape or value (also NULL pointers and bad handles) */
  ATTNKIT_ERROR_TYPE = 2,      /* bad dtype or device */
  ATTNKIT_ERROR_NOT_BUILT = 3, /* the backend needed was not compiled in (e.g. CUDA) */
  ATTNKIT_ERROR_RUNTIME = 4    /* a failure outside the caller's control (out of memory, CUDA error) */
};

/* Message of the most recent failed attnkit call on this thread; "" when the last call succeeded. The
 * pointer stays valid until the next attnkit call on this thread. */
ATTNKIT_API const char* attnkit_last_error(void);
/* "ok", "value_error", "type_error", "not_built", "runtime_error" (or "unknown"). */
ATTNKIT_API const char* attnkit_status_name(attnkit_status status);
/* The library's version, "MAJOR.MINOR.PATCH" (compare with ATTNKIT_VERSION_STRING). */
ATTNKIT_API const char* attnkit_version(void);
/* The library's ATTNKIT_ABI_VERSION. */
ATTNKIT_API int32_t attnkit_abi_version(void);
/* 1 when the CUDA backend was compiled in, else 0. */
ATTNKIT_API int32_t attnkit_built_with_cuda(void);
/* 1 when the public function `mechanism` ("attention", "lsh_attention", ...) runs on CUDA tensors in this
 * build and process (see attnkit::cuda_has_kernel), else 0. */
ATTNKIT_API int32_t attnkit_cuda_has_kernel(const char* mechanism);
/* "avx512bf16", "avx512", "avx2" or "generic": the CPU micro-kernels in use. */
ATTNKIT_API const char* attnkit_cpu_isa(void);
/* CPU threads of later calls from this thread (n >= 1). */
ATTNKIT_API attnkit_status attnkit_set_num_threads(int32_t n);
ATTNKIT_API int32_t attnkit_get_num_threads(void);
/* Backend tuning options (speed only, never a result beyond rounding; process-wide): "linear_chunk"
 * (linear attention / Performer chunk length, 0 = default, else 1..1024), "dla_chunk" (DLA: 0 automatic,
 * L >= 1 chunks of L tokens, 1 = token by token) and "dla_split" (DLA prefill on CUDA: blocks per (batch,
 * head), 0 automatic, else 1..8); "cuda_decode*" pick the CUDA decode kernel's variant. */
ATTNKIT_API attnkit_status attnkit_set_tuning(const char* name, int64_t value);
ATTNKIT_API attnkit_status attnkit_get_tuning(const char* name, int64_t* value);

/* ------------------------------------------------------------------------------------------ tensors */

/* Element types (the values of attnkit::DType). */
enum {
  ATTNKIT_FLOAT32 = 0,
  ATTNKIT_FLOAT64 = 1,
  ATTNKIT_FLOAT16 = 2,  /* IEEE binary16 */
  ATTNKIT_BFLOAT16 = 3, /* the upper half of a float32 */
  ATTNKIT_BOOL = 4,     /* one byte, 0 = false */
  ATTNKIT_INT32 = 5,
  ATTNKIT_INT64 = 6
};

/* Devices (the values of attnkit::Device). */
enum { ATTNKIT_CPU = 0, ATTNKIT_CUDA = 1 };

/* Largest rank a tensor may have. */
#define ATTNKIT_MAX_RANK 8

/* A borrowed strided view of caller memory. */
typedef struct attnkit_tensor {
  void* data;             /* address of element [0, 0, ...]; may be NULL when a dim is 0 */
  int32_t dtype;          /* ATTNKIT_FLOAT32, ... */
  int32_t device;         /* ATTNKIT_CPU or ATTNKIT_CUDA */
  int32_t device_index;   /* CUDA device ordinal (ignored on the CPU) */
  int32_t rank;           /* 0 .. ATTNKIT_MAX_RANK */
  const int64_t* shape;   /* rank sizes, outermost first (may be NULL for rank 0) */
  const int64_t* strides; /* rank strides in ELEMENTS (any sign), or NULL = C-contiguous */
} attnkit_tensor;

/* A C-contiguous CPU tensor over data (shape must outlive the call that uses the tensor). */
static inline attnkit_tensor attnkit_tensor_cpu(void* data, int32_t dtype, int32_t rank, const int64_t* shape) {
  attnkit_tensor t;
  t.data = data;
  t.dtype = dtype;
  t.device = ATTNKIT_CPU;
  t.device_index = 0;
  t.rank = rank;
  t.shape = shape;
  t.strides = NULL;
  return t;
}

/* ------------------------------------------------------------------ exact attention, weights, merge */

/* Options of attnkit_attention() and attnkit_attention_weights() (attnkit::AttentionParams). */
typedef struct attnkit_attention_options {
  uint32_t struct_size;
  int32_t has_scale;     /* 0: scale = 1/sqrt(D) (default); 1: use scale */
  double scale;
  double softcap;        /* 0 = off (default), else c > 0 */
  int32_t causal;        /* 0 (default) or 1; bottom-right aligned */
  int64_t window_left;   /* < 0 = unbounded (default -1) */
  int64_t window_right;  /* < 0 = unbounded (default -1) */
  const attnkit_tensor* mask;         /* optional bool, broadcastable to [B, Hq, Sq, Sk]; true = attend */
  const attnkit_tensor* bias;         /* optional float, broadcastable to [B, Hq, Sq, Sk] */
  const attnkit_tensor* key_lengths;  /* optional int32/int64 [B] */
  const attnkit_tensor* alibi_slopes; /* optional float [Hq] or [B, Hq] */
  void* stream;                       /* cudaStream_t for CUDA tensors (NULL = default stream) */
} attnkit_attention_options;

static inline attnkit_attention_options attnkit_attention_options_default(void) {
  attnkit_attention_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.has_scale = 0;
  o.scale = 0.0;
  o.softcap = 0.0;
  o.causal = 0;
  o.window_left = -1;
  o.window_right = -1;
  o.mask = NULL;
  o.bias = NULL;
  o.key_lengths = NULL;
  o.alibi_slopes = NULL;
  o.stream = NULL;
  return o;
}

/* Exact attention: q [B, Hq, Sq, D], k [B, Hkv, Sk, D], v [B, Hkv, Sk, Dv] (or 3-D / 2-D) write
 * out [B, Hq, Sq, Dv] (q's dtype) and, when lse is not NULL, lse [B, Hq, Sq] (float32; float64 for
 * float64). opts may be NULL (defaults). */
ATTNKIT_API attnkit_status attnkit_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                             const attnkit_tensor* v, const attnkit_tensor* out,
                                             const attnkit_tensor* lse, const attnkit_attention_options* opts);

/* Attention probabilities weights [B, Hq, Sq, Sk] (q's dtype). opts may be NULL. */
ATTNKIT_API attnkit_status attnkit_attention_weights(const attnkit_tensor* q, const attnkit_tensor* k,
                                                     const attnkit_tensor* weights,
                                                     const attnkit_attention_options* opts);

/* Merges num_parts partial results (outs[i] [..., S, Dv], lses[i] [..., S]) over disjoint key sets into
 * out and (optional) lse. stream: cudaStream_t for CUDA tensors, else NULL. */
ATTNKIT_API attnkit_status attnkit_merge_attention(const attnkit_tensor* outs, const attnkit_tensor* lses,
                                                   int64_t num_parts, const attnkit_tensor* out,
                                                   const attnkit_tensor* lse, void* stream);

/* ------------------------------------------------------------------------ block layouts (a handle) */

typedef struct attnkit_layout attnkit_layout;

/* From a dense bool block mask blocks [num_heads, num_q_blocks, num_k_blocks] (bool/uint8, C-contiguous
 * CPU memory). */
ATTNKIT_API attnkit_status attnkit_layout_from_dense(const uint8_t* blocks, int64_t num_heads,
                                                     int64_t num_q_blocks, int64_t num_k_blocks,
                                                     int64_t block_q, int64_t block_k, attnkit_layout** layout);
/* The constructors of attnkit::BlockLayout (block_sparse.h documents each rule); causal is 0 or 1. */
ATTNKIT_API attnkit_status attnkit_layout_sliding_window(int64_t seq_len, int64_t block_size,
                                                         int64_t window_blocks, int32_t causal,
                                                         int64_t num_heads, attnkit_layout** layout);
ATTNKIT_API attnkit_status attnkit_layout_longformer(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                                     const int64_t* global_tokens, int64_t num_global_tokens,
                                                     int64_t dilation, int32_t causal, int64_t num_heads,
                                                     attnkit_layout** layout);
ATTNKIT_API attnkit_status attnkit_layout_bigbird(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                                  int64_t global_blocks, int64_t random_blocks, uint64_t seed,
                                                  int32_t causal, int64_t num_heads, attnkit_layout** layout);
ATTNKIT_API attnkit_status attnkit_layout_fixed(int64_t seq_len, int64_t block_size, int64_t local_blocks,
                                                int64_t global_blocks, int32_t causal, int64_t num_heads,
                                                attnkit_layout** layout);
/* Union of num_layouts layouts of one block size and block counts. */
ATTNKIT_API attnkit_status attnkit_layout_union(const attnkit_layout* const* layouts, int64_t num_layouts,
                                                attnkit_layout** layout);
/* Frees a layout; NULL is a no-op, a destroyed handle a VALUE error. */
ATTNKIT_API attnkit_status attnkit_layout_destroy(attnkit_layout* layout);

/* Block geometry of a layout (any output pointer may be NULL). */
typedef struct attnkit_layout_info {
  int64_t block_q, block_k, num_heads, num_q_blocks, num_k_blocks;
  int64_t nnz;     /* allowed blocks */
  double density;  /* allowed blocks / all blocks */
} attnkit_layout_info;
ATTNKIT_API attnkit_status attnkit_layout_get_info(const attnkit_layout* layout, attnkit_layout_info* info);
/* Writes the dense bool mask [num_heads, num_q_blocks, num_k_blocks] into blocks (size bytes). */
ATTNKIT_API attnkit_status attnkit_layout_to_dense(const attnkit_layout* layout, uint8_t* blocks, int64_t size);

/* Options of attnkit_block_sparse_attention(). */
typedef struct attnkit_block_sparse_options {
  uint32_t struct_size;
  int32_t has_scale;  /* 0: scale = 1/sqrt(D) */
  double scale;
  int32_t causal;     /* bottom-right aligned inside the allowed blocks */
  const attnkit_tensor* key_lengths;  /* optional int32/int64 [B] */
  void* stream;
} attnkit_block_sparse_options;

static inline attnkit_block_sparse_options attnkit_block_sparse_options_default(void) {
  attnkit_block_sparse_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.has_scale = 0;
  o.scale = 0.0;
  o.causal = 0;
  o.key_lengths = NULL;
  o.stream = NULL;
  return o;
}

/* attnkit_attention() restricted to the layout's blocks (num_heads 1 or Hq, block counts matching
 * ceil(Sq / block_q), ceil(Sk / block_k)). opts may be NULL. */
ATTNKIT_API attnkit_status attnkit_block_sparse_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                          const attnkit_tensor* v, const attnkit_layout* layout,
                                                          const attnkit_tensor* out, const attnkit_tensor* lse,
                                                          const attnkit_block_sparse_options* opts);

/* ---------------------------------------------------------------------------------- LSH (Reformer) */

/* Bucket ids out (int32 [B, H, num_hashes, S]; rank follows x) of x [B, H, S, D]. */
ATTNKIT_API attnkit_status attnkit_lsh_buckets(const attnkit_tensor* x, const attnkit_tensor* out,
                                               int64_t num_buckets, int64_t num_hashes, uint64_t seed,
                                               void* stream);

typedef struct attnkit_lsh_options {
  uint32_t struct_size;
  int64_t num_buckets;  /* even, >= 2 (default 2) */
  int64_t num_hashes;   /* >= 1 (default 1) */
  uint64_t seed;        /* default 0 */
  int32_t causal;
  int32_t has_scale;
  double scale;
  void* stream;
} attnkit_lsh_options;

static inline attnkit_lsh_options attnkit_lsh_options_default(void) {
  attnkit_lsh_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.num_buckets = 2;
  o.num_hashes = 1;
  o.seed = 0;
  o.causal = 0;
  o.has_scale = 0;
  o.scale = 0.0;
  o.stream = NULL;
  return o;
}

/* Reformer attention; lse optional. opts may be NULL. */
ATTNKIT_API attnkit_status attnkit_lsh_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                 const attnkit_tensor* v, const attnkit_tensor* out,
                                                 const attnkit_tensor* lse, const attnkit_lsh_options* opts);

/* ------------------------------------------------------------- kernelized linear attention (state) */

enum { ATTNKIT_FEATURE_ELU1 = 0, ATTNKIT_FEATURE_RELU = 1, ATTNKIT_FEATURE_IDENTITY = 2 };

typedef struct attnkit_linear_options {
  uint32_t struct_size;
  int32_t feature_map;  /* ATTNKIT_FEATURE_* (default ELU1) */
  int32_t causal;       /* default 1 */
  int32_t normalize;    /* default 1 */
  double eps;           /* default 1e-6 */
  const attnkit_tensor* key_lengths;        /* optional int32/int64 [B] */
  const attnkit_tensor* initial_state;      /* optional [B, Hkv, F, Dv], with initial_normalizer */
  const attnkit_tensor* initial_normalizer; /* optional [B, Hkv, F] */
  const attnkit_tensor* final_state;        /* optional output, with final_normalizer */
  const attnkit_tensor* final_normalizer;   /* optional output */
  void* stream;
} attnkit_linear_options;

static inline attnkit_linear_options attnkit_linear_options_default(void) {
  attnkit_linear_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.feature_map = ATTNKIT_FEATURE_ELU1;
  o.causal = 1;
  o.normalize = 1;
  o.eps = 1e-6;
  o.key_lengths = NULL;
  o.initial_state = NULL;
  o.initial_normalizer = NULL;
  o.final_state = NULL;
  o.final_normalizer = NULL;
  o.stream = NULL;
  return o;
}

ATTNKIT_API attnkit_status attnkit_linear_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                    const attnkit_tensor* v, const attnkit_tensor* out,
                                                    const attnkit_linear_options* opts);

/* ------------------------------------------------------------------- Performer (random features) */

enum { ATTNKIT_SCALING_CHI = 0, ATTNKIT_SCALING_SQRT_D = 1 };
enum { ATTNKIT_PERFORMER_SOFTMAX = 0, ATTNKIT_PERFORMER_RELU = 1 };

/* Random features W (out [m, D], any floating dtype, CPU memory): m and D are out's shape. orthogonal is
 * 0 or 1, scaling ATTNKIT_SCALING_*. */
ATTNKIT_API attnkit_status attnkit_random_features(const attnkit_tensor* out, uint64_t seed, int32_t orthogonal,
                                                   int32_t scaling);

typedef struct attnkit_performer_options {
  uint32_t struct_size;
  int32_t kernel;      /* ATTNKIT_PERFORMER_* (default SOFTMAX) */
  int32_t causal;      /* default 0 */
  int32_t has_scale;   /* 0: scale = 1/sqrt(D) */
  double scale;
  double eps;          /* default 1e-6 */
  const attnkit_tensor* key_lengths;
  void* stream;
} attnkit_performer_options;

static inline attnkit_performer_options attnkit_performer_options_default(void) {
  attnkit_performer_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.kernel = ATTNKIT_PERFORMER_SOFTMAX;
  o.causal = 0;
  o.has_scale = 0;
  o.scale = 0.0;
  o.eps = 1e-6;
  o.key_lengths = NULL;
  o.stream = NULL;
  return o;
}

/* Performer attention with features W [m, D]. opts may be NULL. */
ATTNKIT_API attnkit_status attnkit_performer_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                       const attnkit_tensor* v, const attnkit_tensor* features,
                                                       const attnkit_tensor* out,
                                                       const attnkit_performer_options* opts);

/* ---------------------------------------------------------------------------------------- Linformer */

/* Projection out [P, Sk] (shared) or [H, P, Sk] (per head), any floating dtype, CPU memory. */
ATTNKIT_API attnkit_status attnkit_linformer_projection(const attnkit_tensor* out, uint64_t seed);

typedef struct attnkit_linformer_options {
  uint32_t struct_size;
  int32_t has_scale;
  double scale;
  const attnkit_tensor* key_lengths;
  void* stream;
} attnkit_linformer_options;

static inline attnkit_linformer_options attnkit_linformer_options_default(void) {
  attnkit_linformer_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.has_scale = 0;
  o.scale = 0.0;
  o.key_lengths = NULL;
  o.stream = NULL;
  return o;
}

/* attention(q, E k, F v); F NULL means F = E; lse optional. opts may be NULL. */
ATTNKIT_API attnkit_status attnkit_linformer_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                       const attnkit_tensor* v, const attnkit_tensor* E,
                                                       const attnkit_tensor* F, const attnkit_tensor* out,
                                                       const attnkit_tensor* lse,
                                                       const attnkit_linformer_options* opts);

/* ------------------------------------------------------------ dynamic linear attention (a handle) */

typedef struct attnkit_dla_cache attnkit_dla_cache;

/* An empty DLA state cache (position 0) for B x H sequences, capacity C, head dims Dk and Dv; state_dtype
 * ATTNKIT_FLOAT32 (for float32/float16/bfloat16 inputs) or ATTNKIT_FLOAT64 (for float64 inputs). CPU
 * memory. */
ATTNKIT_API attnkit_status attnkit_dla_cache_create(int64_t batch, int64_t heads, int64_t capacity, int64_t dk,
                                                    int64_t dv, int32_t state_dtype, attnkit_dla_cache** cache);
/* Frees a cache; NULL is a no-op, a destroyed handle a VALUE error. */
ATTNKIT_API attnkit_status attnkit_dla_cache_destroy(attnkit_dla_cache* cache);
/* Empties the cache (position 0). */
ATTNKIT_API attnkit_status attnkit_dla_cache_reset(attnkit_dla_cache* cache);
/* Tokens seen so far. */
ATTNKIT_API attnkit_status attnkit_dla_cache_position(const attnkit_dla_cache* cache, int64_t* position);
/* States in use for sequence (b, h). */
ATTNKIT_API attnkit_status attnkit_dla_cache_size(const attnkit_dla_cache* cache, int64_t b, int64_t h,
                                                  int64_t* size);
/* Borrowed read-only views of the five cache arrays (attnkit::DLACacheTensors), valid until the next call
 * that takes this cache. shape_storage must hold 5 * ATTNKIT_MAX_RANK int64s; any of the outputs may be
 * NULL. */
ATTNKIT_API attnkit_status attnkit_dla_cache_tensors(const attnkit_dla_cache* cache, int64_t* shape_storage,
                                                     attnkit_tensor* states, attnkit_tensor* counts,
                                                     attnkit_tensor* info, attnkit_tensor* starts,
                                                     attnkit_tensor* size);

enum { ATTNKIT_DLA_TOKEN_VS_STATE = 0, ATTNKIT_DLA_STATE_DRIFT = 1 };

typedef struct attnkit_dla_options {
  uint32_t struct_size;
  double tau;        /* boundary threshold (default 0.6) */
  int32_t score;     /* ATTNKIT_DLA_* (default TOKEN_VS_STATE) */
  const attnkit_tensor* log_decay;   /* optional [B, H, T], finite, <= 0 */
  const attnkit_tensor* scores;      /* optional output [B, H, T] (state dtype) */
  const attnkit_tensor* boundaries;  /* optional output bool [B, H, T] */
  const attnkit_tensor* merged;      /* optional output int64 [B, H, T] */
  void* stream;
} attnkit_dla_options;

static inline attnkit_dla_options attnkit_dla_options_default(void) {
  attnkit_dla_options o;
  o.struct_size = (uint32_t)sizeof(o);
  o.tau = 0.6;
  o.score = ATTNKIT_DLA_TOKEN_VS_STATE;
  o.log_decay = NULL;
  o.scores = NULL;
  o.boundaries = NULL;
  o.merged = NULL;
  o.stream = NULL;
  return o;
}

/* Dynamic linear attention over the T tokens of q, k, v [B, H, T, D*] and lam [B, H, T, C], continuing
 * from cache and advancing it (on failure the cache is left unchanged). out [B, H, T, Dv]. The cache's
 * B, H, C, Dk, Dv must match. opts may be NULL. */
ATTNKIT_API attnkit_status attnkit_dynamic_linear_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                            const attnkit_tensor* v, const attnkit_tensor* lam,
                                                            attnkit_dla_cache* cache, const attnkit_tensor* out,
                                                            const attnkit_dla_options* opts);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* ATTNKIT_C_API_H */
