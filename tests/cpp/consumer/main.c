/* Downstream use of attnkit's C ABI from plain C99 (built with -std=c99 -Wall -Wextra -Werror -pedantic):
 * one call of each family checked for sanity, exact attention checked against a direct computation, and
 * the error contract (NULL pointers, wrong ranks, bad dtype codes, destroyed handles give a status and a
 * message naming the argument, never a crash). Exit code 0 = all checks passed. */
#include <attnkit/c_api.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

static int failures = 0;

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                            \
    }                                                                        \
  } while (0)

#define CHECK_OK(call)                                                                               \
  do {                                                                                               \
    attnkit_status st_ = (call);                                                                     \
    if (st_ != ATTNKIT_OK) {                                                                         \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, attnkit_status_name(st_), \
              attnkit_last_error());                                                                 \
      ++failures;                                                                                    \
    }                                                                                                \
  } while (0)

/* The call fails with `status` and a message containing `needle`. */
static void expect_error(attnkit_status got, attnkit_status status, const char* needle, int line) {
  if (got != status || strstr(attnkit_last_error(), needle) == NULL) {
    fprintf(stderr, "line %d: expected %s mentioning '%s', got %s: '%s'\n", line, attnkit_status_name(status),
            needle, attnkit_status_name(got), attnkit_last_error());
    ++failures;
  }
}
#define EXPECT_ERROR(call, status, needle) expect_error((call), (status), (needle), __LINE__)

enum { H = 2, S = 6, D = 4 };

static int all_finite(const float* x, int n) {
  int i;
  for (i = 0; i < n; ++i)
    if (!(fabsf(x[i]) < 1e30f)) return 0;
  return 1;
}

int main(void) {
  float q[H * S * D], k[H * S * D], v[H * S * D], out[H * S * D], lse[H * S];
  const int64_t shape[3] = {H, S, D}, lse_shape[2] = {H, S}, bad_shape[2] = {S, D};
  attnkit_tensor tq = attnkit_tensor_cpu(q, ATTNKIT_FLOAT32, 3, shape);
  attnkit_tensor tk = attnkit_tensor_cpu(k, ATTNKIT_FLOAT32, 3, shape);
  attnkit_tensor tv = attnkit_tensor_cpu(v, ATTNKIT_FLOAT32, 3, shape);
  attnkit_tensor tout = attnkit_tensor_cpu(out, ATTNKIT_FLOAT32, 3, shape);
  attnkit_tensor tlse = attnkit_tensor_cpu(lse, ATTNKIT_FLOAT32, 2, lse_shape);
  attnkit_tensor bad;
  attnkit_attention_options opts = attnkit_attention_options_default();
  attnkit_layout* layout = NULL;
  attnkit_dla_cache* cache = NULL;
  double max_err = 0;
  int i, h, j, d;

  for (i = 0; i < H * S * D; ++i) {
    q[i] = (float)sin(0.3 * i);
    k[i] = (float)cos(0.7 * i);
    v[i] = 0.1f * (float)(i % 7);
  }
  CHECK(attnkit_abi_version() == ATTNKIT_ABI_VERSION);
  CHECK(strcmp(attnkit_version(), ATTNKIT_VERSION_STRING) == 0);

  /* exact causal attention vs a direct computation */
  opts.causal = 1;
  CHECK_OK(attnkit_attention(&tq, &tk, &tv, &tout, &tlse, &opts));
  CHECK(strcmp(attnkit_last_error(), "") == 0);
  for (h = 0; h < H; ++h)
    for (i = 0; i < S; ++i) {
      double w[S], m = -1e300, sum = 0;
      for (j = 0; j <= i; ++j) {
        double s = 0;
        for (d = 0; d < D; ++d) s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
        w[j] = s / sqrt((double)D);
        if (w[j] > m) m = w[j];
      }
      for (j = 0; j <= i; ++j) sum += (w[j] = exp(w[j] - m));
      for (d = 0; d < D; ++d) {
        double o = 0;
        for (j = 0; j <= i; ++j) o += w[j] / sum * v[(h * S + j) * D + d];
        if (fabs(o - out[(h * S + i) * D + d]) > max_err) max_err = fabs(o - out[(h * S + i) * D + d]);
      }
      if (fabs(m + log(sum) - lse[h * S + i]) > max_err) max_err = fabs(m + log(sum) - lse[h * S + i]);
    }
  CHECK(max_err < 1e-5);

  /* the error contract */
  EXPECT_ERROR(attnkit_attention(NULL, &tk, &tv, &tout, NULL, NULL), ATTNKIT_ERROR_VALUE, "q is NULL");
  bad = tk;
  bad.dtype = 42;
  EXPECT_ERROR(attnkit_attention(&tq, &bad, &tv, &tout, NULL, NULL), ATTNKIT_ERROR_TYPE, "k.dtype");
  bad = tv;
  bad.rank = 2;
  bad.shape = bad_shape;
  EXPECT_ERROR(attnkit_attention(&tq, &tk, &bad, &tout, NULL, NULL), ATTNKIT_ERROR_VALUE, "v");
  bad = tv;
  bad.rank = 9;
  EXPECT_ERROR(attnkit_attention(&tq, &tk, &bad, &tout, NULL, NULL), ATTNKIT_ERROR_VALUE, "v.rank");
  bad = tout;
  bad.data = NULL;
  EXPECT_ERROR(attnkit_attention(&tq, &tk, &tv, &bad, NULL, NULL), ATTNKIT_ERROR_VALUE, "out.data");
  opts.causal = 7;
  EXPECT_ERROR(attnkit_attention(&tq, &tk, &tv, &tout, NULL, &opts), ATTNKIT_ERROR_VALUE, "opts.causal");
  opts.causal = 1;
  opts.struct_size = 3;
  EXPECT_ERROR(attnkit_attention(&tq, &tk, &tv, &tout, NULL, &opts), ATTNKIT_ERROR_VALUE, "opts.struct_size");
  CHECK_OK(attnkit_attention(&tq, &tk, &tv, &tout, NULL, NULL));
  CHECK(strcmp(attnkit_last_error(), "") == 0);

  /* block-sparse with a layout handle, then the handle's lifetime rules */
  CHECK_OK(attnkit_layout_sliding_window(S, 2, 1, 1, 1, &layout));
  CHECK_OK(attnkit_block_sparse_attention(&tq, &tk, &tv, layout, &tout, NULL, NULL));
  CHECK(all_finite(out, H * S * D));
  CHECK_OK(attnkit_layout_destroy(layout));
  EXPECT_ERROR(attnkit_block_sparse_attention(&tq, &tk, &tv, layout, &tout, NULL, NULL), ATTNKIT_ERROR_VALUE,
               "layout");
  EXPECT_ERROR(attnkit_layout_destroy(layout), ATTNKIT_ERROR_VALUE, "layout");
  EXPECT_ERROR(attnkit_block_sparse_attention(&tq, &tk, &tv, NULL, &tout, NULL, NULL), ATTNKIT_ERROR_VALUE,
               "layout is NULL");
  CHECK_OK(attnkit_layout_destroy(NULL));

  /* LSH, linear and Performer attention */
  {
    attnkit_lsh_options lo = attnkit_lsh_options_default();
    attnkit_linear_options li = attnkit_linear_options_default();
    float w[8 * D];
    const int64_t wshape[2] = {8, D};
    attnkit_tensor tw = attnkit_tensor_cpu(w, ATTNKIT_FLOAT32, 2, wshape);
    lo.num_buckets = 4;
    CHECK_OK(attnkit_lsh_attention(&tq, &tk, &tv, &tout, NULL, &lo));
    CHECK(all_finite(out, H * S * D));
    CHECK_OK(attnkit_linear_attention(&tq, &tk, &tv, &tout, &li));
    CHECK(all_finite(out, H * S * D));
    CHECK_OK(attnkit_random_features(&tw, 7, 1, ATTNKIT_SCALING_CHI));
    CHECK_OK(attnkit_performer_attention(&tq, &tk, &tv, &tw, &tout, NULL));
    CHECK(all_finite(out, H * S * D));
    EXPECT_ERROR(attnkit_random_features(&tw, 7, 1, 9), ATTNKIT_ERROR_VALUE, "scaling");
  }

  /* Linformer */
  {
    float e[3 * S];
    const int64_t eshape[2] = {3, S};
    attnkit_tensor te = attnkit_tensor_cpu(e, ATTNKIT_FLOAT32, 2, eshape);
    CHECK_OK(attnkit_linformer_projection(&te, 1));
    CHECK_OK(attnkit_linformer_attention(&tq, &tk, &tv, &te, NULL, &tout, NULL, NULL));
    CHECK(all_finite(out, H * S * D));
  }

  /* DLA with a cache handle: a prefill of S tokens, then one decode step */
  {
    enum { C = 3 };
    float lam[H * S * C];
    const int64_t lshape[3] = {H, S, C}, qshape1[3] = {H, 1, D}, lshape1[3] = {H, 1, C};
    attnkit_tensor tlam = attnkit_tensor_cpu(lam, ATTNKIT_FLOAT32, 3, lshape);
    attnkit_tensor q1 = attnkit_tensor_cpu(q, ATTNKIT_FLOAT32, 3, qshape1);
    attnkit_tensor k1 = attnkit_tensor_cpu(k, ATTNKIT_FLOAT32, 3, qshape1);
    attnkit_tensor v1 = attnkit_tensor_cpu(v, ATTNKIT_FLOAT32, 3, qshape1);
    attnkit_tensor o1 = attnkit_tensor_cpu(out, ATTNKIT_FLOAT32, 3, qshape1);
    attnkit_tensor lam1 = attnkit_tensor_cpu(lam, ATTNKIT_FLOAT32, 3, lshape1);
    int64_t position = -1;
    for (i = 0; i < H * S * C; ++i) lam[i] = 1.0f / C;
    CHECK_OK(attnkit_dla_cache_create(1, H, C, D, D, ATTNKIT_FLOAT32, &cache));
    CHECK_OK(attnkit_dynamic_linear_attention(&tq, &tk, &tv, &tlam, cache, &tout, NULL));
    CHECK_OK(attnkit_dynamic_linear_attention(&q1, &k1, &v1, &lam1, cache, &o1, NULL));
    CHECK_OK(attnkit_dla_cache_position(cache, &position));
    CHECK(position == S + 1);
    CHECK(all_finite(out, H * D));
    CHECK_OK(attnkit_dla_cache_destroy(cache));
    EXPECT_ERROR(attnkit_dla_cache_position(cache, &position), ATTNKIT_ERROR_VALUE, "cache");
    EXPECT_ERROR(attnkit_dynamic_linear_attention(&tq, &tk, &tv, &tlam, NULL, &tout, NULL), ATTNKIT_ERROR_VALUE,
                 "cache is NULL");
  }

  printf("attnkit %s (C ABI %d, cpu kernels %s): max |out - direct| = %.3g, %d failure(s)\n", attnkit_version(),
         attnkit_abi_version(), attnkit_cpu_isa(), max_err, failures);
  return failures == 0 ? 0 : 1;
}
