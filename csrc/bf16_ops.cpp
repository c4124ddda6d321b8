// bfloat16 products for MindSpore on CPU: custom operators (ops.Custom, func_type="aot") over oneDNN's bf16
// matmul (bf16 x bf16 -> fp32 accumulate; AVX512_BF16 / AMX kernels where the CPU has them).
//
// Entry points (MindSpore's aot signature: inputs then outputs in `params`):
//   bf16_mm_nn(A, B) -> C       A (bA, M, K), B (bB, K, N)  -> C (batch, M, N) float32
//   bf16_mm_nt(A, B) -> C       A (bA, M, K), B (bB, N, K)  -> C (batch, M, N) float32 (A @ B^T)
//   bf16_winograd3x3(x, U, bias) -> y
//       3x3 convolution, stride 1, zero padding 1, by Winograd F(2x2, 3x3) (16 products per 2x2 output tile
//       instead of 36): x (N, C, H, W) float32, U (16, Co, C) the transformed weights G g G^T as bf16 bits,
//       bias (Co) float32 -> y (N, Co, H, W) float32.
// A and B are float32 (rounded to bf16 here, round-to-nearest-even) or uint16 (bf16 bits); bA and bB are 1
// (broadcast) or the batch.
//
// oneDNN is the copy MindSpore ships (mindspore/lib/libdnnl.so.2, v2.2, built for a threadpool runtime): it is
// not linked here but loaded RTLD_GLOBAL by kandinsky_cli/bf16.py before MindSpore loads this library. Its
// streams without a threadpool run sequentially; the work is split over plain threads here, one stream each.
// The few C API declarations used are written out below from oneDNN 2.x's dnnl.h / dnnl_types.h; descriptors
// are opaque buffers larger than oneDNN 2.x's structs (only oneDNN reads or writes them).
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>
#include <sched.h>
#include <immintrin.h>

#define EXPORT __attribute__((visibility("default")))

extern "C" {
typedef void *dnnl_handle;
typedef struct {
  int arg;
  dnnl_handle memory;
} dnnl_exec_arg;
int dnnl_engine_create(dnnl_handle *engine, int kind, size_t index);
int dnnl_stream_create(dnnl_handle *stream, dnnl_handle engine, unsigned flags);
int dnnl_stream_destroy(dnnl_handle stream);
int dnnl_stream_wait(dnnl_handle stream);
int dnnl_memory_desc_init_by_strides(void *md, int ndims, const int64_t *dims, int data_type,
                                     const int64_t *strides);
int dnnl_matmul_desc_init(void *desc, const void *src, const void *weights, const void *bias, const void *dst);
int dnnl_primitive_desc_create(dnnl_handle *pd, const void *op_desc, dnnl_handle attr, dnnl_handle engine,
                               dnnl_handle hint);
int dnnl_primitive_desc_destroy(dnnl_handle pd);
int dnnl_primitive_create(dnnl_handle *primitive, dnnl_handle pd);
int dnnl_memory_create(dnnl_handle *memory, const void *md, dnnl_handle engine, void *handle);
int dnnl_memory_destroy(dnnl_handle memory);
int dnnl_primitive_execute(dnnl_handle primitive, dnnl_handle stream, int nargs, const dnnl_exec_arg *args);
}

namespace {

// oneDNN 2.x enum values (dnnl_types.h).
constexpr int kCpu = 1, kInOrder = 1, kBf16 = 2, kF32 = 3, kArgSrc = 1, kArgDst = 17, kArgWeights = 33;
constexpr size_t kDescBytes = 4096;  // > sizeof(dnnl_memory_desc_t) (~1.1 KB) and of dnnl_matmul_desc_t

dnnl_handle engine() {
  static dnnl_handle e = [] {
    dnnl_handle h = nullptr;
    return dnnl_engine_create(&h, kCpu, 0) == 0 ? h : nullptr;
  }();
  return e;
}

// One sequential oneDNN stream per thread.
struct Stream {
  dnnl_handle h = nullptr;
  Stream() { dnnl_stream_create(&h, engine(), kInOrder); }
  ~Stream() {
    if (h) dnnl_stream_destroy(h);
  }
};

// C (m, n) = A (m, k) @ B, B (k, n) or, with trans_b, B (n, k) transposed; leading dimensions in elements.
// Primitives are made once per shape and kept (executing one is thread-safe).
bool gemm(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda, const uint16_t *b, int64_t ldb,
          bool trans_b, float *c, int64_t ldc) {
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool>;
  static std::map<Key, dnnl_handle> primitives;
  static std::mutex lock;
  alignas(64) static thread_local unsigned char md_a[kDescBytes], md_b[kDescBytes], md_c[kDescBytes];
  static thread_local Stream stream;
  if (!engine() || !stream.h) return false;
  const int64_t dims_a[2] = {m, k}, strides_a[2] = {lda, 1};
  const int64_t dims_b[2] = {k, n}, strides_b[2] = {trans_b ? 1 : ldb, trans_b ? ldb : 1};
  const int64_t dims_c[2] = {m, n}, strides_c[2] = {ldc, 1};
  if (dnnl_memory_desc_init_by_strides(md_a, 2, dims_a, kBf16, strides_a) ||
      dnnl_memory_desc_init_by_strides(md_b, 2, dims_b, kBf16, strides_b) ||
      dnnl_memory_desc_init_by_strides(md_c, 2, dims_c, kF32, strides_c))
    return false;
  dnnl_handle primitive = nullptr;
  {
    std::lock_guard<std::mutex> guard(lock);
    const Key key{m, n, k, lda, ldb, ldc, trans_b};
    auto found = primitives.find(key);
    if (found != primitives.end()) {
      primitive = found->second;
    } else {
      alignas(64) static unsigned char desc[4 * kDescBytes];
      dnnl_handle pd = nullptr;
      if (dnnl_matmul_desc_init(desc, md_a, md_b, nullptr, md_c) ||
          dnnl_primitive_desc_create(&pd, desc, nullptr, engine(), nullptr))
        return false;
      const bool made = dnnl_primitive_create(&primitive, pd) == 0;
      dnnl_primitive_desc_destroy(pd);
      if (!made) return false;
      primitives[key] = primitive;
    }
  }
  dnnl_handle mem_a = nullptr, mem_b = nullptr, mem_c = nullptr;
  bool ok = !dnnl_memory_create(&mem_a, md_a, engine(), const_cast<uint16_t *>(a)) &&
            !dnnl_memory_create(&mem_b, md_b, engine(), const_cast<uint16_t *>(b)) &&
            !dnnl_memory_create(&mem_c, md_c, engine(), c);
  if (ok) {
    const dnnl_exec_arg args[3] = {{kArgSrc, mem_a}, {kArgWeights, mem_b}, {kArgDst, mem_c}};
    ok = !dnnl_primitive_execute(primitive, stream.h, 3, args) && !dnnl_stream_wait(stream.h);
  }
  for (dnnl_handle mem : {mem_a, mem_b, mem_c})
    if (mem) dnnl_memory_destroy(mem);
  return ok;
}

inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

int thread_count() {
  static int count = [] {
    if (const char *env = std::getenv("KANDINSKY_BF16_THREADS")) {
      int n = std::atoi(env);
      if (n > 0) return n;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return count;
}

// fn(begin, end) over [0, n) in up to thread_count() contiguous chunks; the calling thread takes the first.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)> &fn) {
  int t = static_cast<int>(std::min<int64_t>(thread_count(), n));
  if (t <= 1) {
    if (n > 0) fn(0, n);
    return;
  }
  std::vector<std::thread> workers;
  int64_t chunk = (n + t - 1) / t;
  for (int i = 1; i < t; ++i) {
    int64_t b = i * chunk, e = std::min(n, b + chunk);
    if (b < e) workers.emplace_back(fn, b, e);
  }
  fn(0, std::min(n, chunk));
  for (auto &w : workers) w.join();
}

// Work buffers kept between calls and only ever grown, uninitialised: a fresh allocation per call would pay
// for its page faults every time (measured: ~1/3 of the Winograd time in a UNet step at 768x768). Each entry
// point holds its own buffers under its own lock (MindSpore may run two kernels at once).
template <typename T>
struct Scratch {
  std::unique_ptr<T[]> data;
  size_t size = 0;
  T *get(size_t n) {
    if (n > size) {
      data.reset(new T[n]);
      size = n;
    }
    return data.get();
  }
};

// bf16 bits of `count` values at `data` (float32 or uint16): a pointer into `data` or into `scratch`.
const uint16_t *as_bf16(void *data, const char *dtype, int64_t count, Scratch<uint16_t> &scratch) {
  if (std::strcmp(dtype, "float32") != 0) return static_cast<const uint16_t *>(data);
  const float *src = static_cast<const float *>(data);
  uint16_t *dst = scratch.get(count);
  parallel_for(count, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = to_bf16(src[i]);
  });
  return dst;
}

bool is_operand(const char *dtype) { return !std::strcmp(dtype, "float32") || !std::strcmp(dtype, "uint16"); }

int matmul(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, bool trans_b) {
  if (nparam != 3 || ndims[0] != 3 || ndims[1] != 3 || ndims[2] != 3) return 1;
  if (!is_operand(dtypes[0]) || !is_operand(dtypes[1]) || std::strcmp(dtypes[2], "float32")) return 1;
  const int64_t ba = shapes[0][0], m = shapes[0][1], k = shapes[0][2];
  const int64_t bb = shapes[1][0];
  const int64_t n = trans_b ? shapes[1][1] : shapes[1][2];
  const int64_t kb = trans_b ? shapes[1][2] : shapes[1][1];
  const int64_t batch = shapes[2][0];
  if (kb != k || shapes[2][1] != m || shapes[2][2] != n) return 1;
  if ((ba != 1 && ba != batch) || (bb != 1 && bb != batch)) return 1;
  float *c = static_cast<float *>(params[2]);
  if (k == 0) {
    std::memset(c, 0, sizeof(float) * batch * m * n);
    return 0;
  }
  static std::mutex lock;
  static Scratch<uint16_t> scratch_a, scratch_b;
  std::lock_guard<std::mutex> guard(lock);
  const uint16_t *a = as_bf16(params[0], dtypes[0], ba * m * k, scratch_a);
  const uint16_t *b = as_bf16(params[1], dtypes[1], bb * k * n, scratch_b);
  const int64_t ldb = trans_b ? k : n;
  // Work items: (batch entry, block of M rows); enough blocks to keep every thread busy.
  const int64_t threads = thread_count();
  const int64_t blocks = batch >= threads ? 1 : std::min<int64_t>(m, (threads + batch - 1) / batch);
  const int64_t rows = (m + blocks - 1) / blocks;
  std::atomic<bool> ok{true};
  parallel_for(batch * blocks, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / blocks, r0 = (item % blocks) * rows, r1 = std::min(m, r0 + rows);
      if (r0 >= r1) continue;
      const uint16_t *ai = a + (ba == 1 ? 0 : i * m * k) + r0 * k;
      const uint16_t *bi = b + (bb == 1 ? 0 : i * k * n);
      if (!gemm(r1 - r0, n, k, ai, k, bi, ldb, trans_b, c + i * m * n + r0 * n, n)) ok = false;
    }
  });
  return ok ? 0 : 1;
}

// KANDINSKY_BF16_PROFILE=1: the calls and seconds spent in each entry point, printed to stderr at exit.
struct Profile {
  const char *name;
  std::atomic<int64_t> calls{0}, nanos{0};
  explicit Profile(const char *n) : name(n) {}
  ~Profile();
};

struct Timed {
  Profile &p;
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  explicit Timed(Profile &profile) : p(profile) {}
  ~Timed() {
    p.calls++;
    p.nanos += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  }
};

// -- 3x3 convolution ------------------------------------------------------------------------------------------

// The tile transforms run row by row over contiguous arrays, so that the compiler vectorises them; these
// functions are compiled for AVX-512 (the library only runs on CPUs with AVX512_BF16, see bf16.py).
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// dst[i] = bf16(src[i]): the CPU's round-to-nearest-even conversion, 16 at a time.
AVX512 void store_bf16(const float *src, uint16_t *dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh b = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(dst + i), reinterpret_cast<const __m256i &>(b));
  }
  for (; i < n; ++i) dst[i] = to_bf16(src[i]);
}

// V rows of one (sample, channel) plane, tile rows [ty0, ty1): V[xi][(ty - ty0) tw + tx] = (B^T d B)[xi] of the
// 4x4 input tile at (2 ty - 1, 2 tx - 1), zero outside the image; V[xi] starts xi * xi_stride after v.
// B^T rows: (1 0 -1 0) (0 1 1 0) (0 -1 1 0) (0 1 0 -1).
AVX512 void winograd_input(const float *plane, int64_t h, int64_t w, int64_t ty0, int64_t ty1, int64_t tw,
                           uint16_t *v, int64_t xi_stride) {
  const int64_t len = 2 * tw + 2;        // a padded row: index 0 is x = -1
  std::vector<float> rows(4 * len), t(4 * len), out(tw);
  for (int64_t ty = ty0; ty < ty1; ++ty) {
    for (int i = 0; i < 4; ++i) {
      float *r = rows.data() + i * len;
      const int64_t yy = 2 * ty - 1 + i;
      std::fill(r, r + len, 0.0f);
      if (yy >= 0 && yy < h) std::memcpy(r + 1, plane + yy * w, sizeof(float) * w);
    }
    const float *r0 = rows.data(), *r1 = r0 + len, *r2 = r1 + len, *r3 = r2 + len;
    float *t0 = t.data(), *t1 = t0 + len, *t2 = t1 + len, *t3 = t2 + len;
    for (int64_t k = 0; k < len; ++k) {
      t0[k] = r0[k] - r2[k];
      t1[k] = r1[k] + r2[k];
      t2[k] = r2[k] - r1[k];
      t3[k] = r1[k] - r3[k];
    }
    for (int i = 0; i < 4; ++i) {
      const float *ti = t.data() + i * len;
      uint16_t *dst = v + (4 * i) * xi_stride + (ty - ty0) * tw;
      for (int64_t q = 0; q < tw; ++q) out[q] = ti[2 * q] - ti[2 * q + 2];
      store_bf16(out.data(), dst, tw);
      for (int64_t q = 0; q < tw; ++q) out[q] = ti[2 * q + 1] + ti[2 * q + 2];
      store_bf16(out.data(), dst + xi_stride, tw);
      for (int64_t q = 0; q < tw; ++q) out[q] = ti[2 * q + 2] - ti[2 * q + 1];
      store_bf16(out.data(), dst + 2 * xi_stride, tw);
      for (int64_t q = 0; q < tw; ++q) out[q] = ti[2 * q + 1] - ti[2 * q + 3];
      store_bf16(out.data(), dst + 3 * xi_stride, tw);
    }
  }
}

// Tile rows [ty0, ty1) of one (sample, output channel) plane from M[xi][(ty - ty0) tw + tx] (M[xi] at
// m + xi * xi_stride): y = A^T M A + bias, A^T rows (1 1 1 0) (0 1 -1 -1), clipped at the image's edge.
AVX512 void winograd_output(const float *m, int64_t xi_stride, float bias, float *plane, int64_t h, int64_t w,
                            int64_t ty0, int64_t ty1, int64_t tw) {
  std::vector<float> t(8 * tw), y0(2 * tw), y1(2 * tw);
  for (int64_t ty = ty0; ty < ty1; ++ty) {
    const float *row = m + (ty - ty0) * tw;
    for (int j = 0; j < 4; ++j) {   // t0j = m0j + m1j + m2j, t1j = m1j - m2j - m3j  (m_ij = M[4 i + j])
      const float *a0 = row + j * xi_stride, *a1 = a0 + 4 * xi_stride, *a2 = a1 + 4 * xi_stride,
                  *a3 = a2 + 4 * xi_stride;
      float *u0 = t.data() + j * tw, *u1 = t.data() + (4 + j) * tw;
      for (int64_t q = 0; q < tw; ++q) {
        u0[q] = a0[q] + a1[q] + a2[q];
        u1[q] = a1[q] - a2[q] - a3[q];
      }
    }
    for (int i = 0; i < 2; ++i) {
      const float *s0 = t.data() + 4 * i * tw, *s1 = s0 + tw, *s2 = s1 + tw, *s3 = s2 + tw;
      float *dst = i == 0 ? y0.data() : y1.data();
      for (int64_t q = 0; q < tw; ++q) {
        dst[2 * q] = s0[q] + s1[q] + s2[q] + bias;
        dst[2 * q + 1] = s1[q] - s2[q] - s3[q] + bias;
      }
    }
    std::memcpy(plane + 2 * ty * w, y0.data(), sizeof(float) * w);
    if (2 * ty + 1 < h) std::memcpy(plane + (2 * ty + 1) * w, y1.data(), sizeof(float) * w);
  }
}

// Seconds in each Winograd phase (input transform, products, output transform), for KANDINSKY_BF16_PROFILE.
std::atomic<int64_t> winograd_phase_nanos[3];

int64_t nanos_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
}

// Winograd F(2x2, 3x3) with U (16, co, ci) bf16 bits: V = B^T d B per 4x4 input tile (stride 2), 16 products
// M = U V, y = A^T M A + bias. The tiles are taken in chunks of whole tile rows (rows of every sample in turn),
// about kChunkTiles at a time: the work buffers stay ~16 kChunkTiles (2 C + 4 Co) bytes however large the image
// (a MoVQ decode at 768x768 has 147k tiles per channel), while the deep, small maps of a UNet still run as one
// product per position with every sample in it (there the weights, read once per chunk, set the time).
constexpr int64_t kChunkTiles = 8192;

bool winograd(const float *x, const uint16_t *u, const float *bias, float *y, int64_t nb, int64_t ci, int64_t co,
              int64_t h, int64_t w) {
  const int64_t th = (h + 1) / 2, tw = (w + 1) / 2, rows_total = nb * th;
  if (rows_total == 0 || tw == 0 || co == 0) return true;
  const int64_t chunk_rows = std::min(rows_total, std::max<int64_t>(1, kChunkTiles / tw));
  static std::mutex lock;
  static Scratch<uint16_t> vbuf;
  static Scratch<float> mbuf;
  std::lock_guard<std::mutex> guard(lock);
  uint16_t *v = vbuf.get(16 * ci * chunk_rows * tw);
  float *mm = mbuf.get(16 * co * chunk_rows * tw);
  const int64_t threads = thread_count();
  const int64_t blocks = std::min<int64_t>(co, std::max<int64_t>(1, (threads + 15) / 16));
  const int64_t block_rows = (co + blocks - 1) / blocks;

  for (int64_t r0 = 0; r0 < rows_total; r0 += chunk_rows) {
    const int64_t r1 = std::min(rows_total, r0 + chunk_rows), p = (r1 - r0) * tw;
    // the chunk's tile rows as (sample, first row, end row, first column of V/M)
    std::vector<std::array<int64_t, 4>> segments;
    for (int64_t r = r0; r < r1;) {
      const int64_t n = r / th, ty0 = r % th, ty1 = std::min(th, ty0 + (r1 - r));
      segments.push_back({n, ty0, ty1, (r - r0) * tw});
      r += ty1 - ty0;
    }
    auto t0 = std::chrono::steady_clock::now();
    parallel_for(ci, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c)
        for (const auto &s : segments)
          winograd_input(x + (s[0] * ci + c) * h * w, h, w, s[1], s[2], tw, v + c * p + s[3], ci * p);
    });
    winograd_phase_nanos[0] += nanos_since(t0);

    // M[xi] (Co, P) = U[xi] (Co, C) @ V[xi] (C, P): 16 products, split with their Co rows over the threads.
    t0 = std::chrono::steady_clock::now();
    std::atomic<bool> ok{true};
    parallel_for(16 * blocks, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t xi = item / blocks, o0 = (item % blocks) * block_rows, o1 = std::min(co, o0 + block_rows);
        if (o0 < o1 && !gemm(o1 - o0, p, ci, u + (xi * co + o0) * ci, ci, v + xi * ci * p, p, false,
                             mm + (xi * co + o0) * p, p))
          ok = false;
      }
    });
    if (!ok) return false;
    winograd_phase_nanos[1] += nanos_since(t0);

    t0 = std::chrono::steady_clock::now();
    parallel_for(co, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o)
        for (const auto &s : segments)
          winograd_output(mm + o * p + s[3], co * p, bias[o], y + (s[0] * co + o) * h * w, h, w, s[1], s[2], tw);
    });
    winograd_phase_nanos[2] += nanos_since(t0);
  }
  return true;
}

Profile::~Profile() {
  if (!calls || !std::getenv("KANDINSKY_BF16_PROFILE")) return;
  std::fprintf(stderr, "bf16 profile: %s %lld calls %.3f s", name, static_cast<long long>(calls.load()),
               nanos.load() * 1e-9);
  if (!std::strcmp(name, "bf16_winograd3x3"))
    std::fprintf(stderr, " (input transform %.3f s, products %.3f s, output transform %.3f s)",
                 winograd_phase_nanos[0] * 1e-9, winograd_phase_nanos[1] * 1e-9, winograd_phase_nanos[2] * 1e-9);
  std::fprintf(stderr, "\n");
}

Profile profile_nn("bf16_mm_nn"), profile_nt("bf16_mm_nt"), profile_winograd("bf16_winograd3x3");

}  // namespace

extern "C" EXPORT int bf16_mm_nn(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  Timed timed(profile_nn);
  return matmul(nparam, params, ndims, shapes, dtypes, false);
}

extern "C" EXPORT int bf16_mm_nt(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  Timed timed(profile_nt);
  return matmul(nparam, params, ndims, shapes, dtypes, true);
}

extern "C" EXPORT int bf16_winograd3x3(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *stream, void *extra) {
  Timed timed(profile_winograd);
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 3 || ndims[2] != 1 || ndims[3] != 4) return 1;
  if (std::strcmp(dtypes[0], "float32") || std::strcmp(dtypes[1], "uint16") || std::strcmp(dtypes[2], "float32") ||
      std::strcmp(dtypes[3], "float32"))
    return 1;
  const int64_t nb = shapes[0][0], ci = shapes[0][1], h = shapes[0][2], w = shapes[0][3];
  const int64_t co = shapes[1][1];
  if (shapes[1][0] != 16 || shapes[1][2] != ci || shapes[2][0] != co || shapes[3][0] != nb || shapes[3][1] != co ||
      shapes[3][2] != h || shapes[3][3] != w)
    return 1;
  return winograd(static_cast<const float *>(params[0]), static_cast<const uint16_t *>(params[1]),
                  static_cast<const float *>(params[2]), static_cast<float *>(params[3]), nb, ci, co, h, w)
             ? 0
             : 1;
}

// -- host-side weight conversion (called through ctypes by bf16.py, not by MindSpore) -------------------------

// dst[i] = bf16(src[i]), rounding to nearest even.
extern "C" EXPORT void bf16_round(const float *src, uint16_t *dst, int64_t n) {
  parallel_for((n + 65535) / 65536, [&](int64_t begin, int64_t end) {
    const int64_t b = begin * 65536, e = std::min(n, end * 65536);
    store_bf16(src + b, dst + b, e - b);
  });
}

// U (16, co, ci) = G g G^T of float32 weights g (co, ci, 3, 3), rounded to bf16; G rows (1 0 0) (1/2 1/2 1/2)
// (1/2 -1/2 1/2) (0 0 1).
extern "C" EXPORT void bf16_winograd_weights(const float *g, uint16_t *u, int64_t co, int64_t ci) {
  parallel_for(co, [&](int64_t begin, int64_t end) {
    std::vector<float> row(16 * ci);
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t c = 0; c < ci; ++c) {
        const float *k = g + (o * ci + c) * 9;
        float gk[4][3];
        for (int j = 0; j < 3; ++j) {
          gk[0][j] = k[j];
          gk[1][j] = 0.5f * (k[j] + k[3 + j] + k[6 + j]);
          gk[2][j] = 0.5f * (k[j] - k[3 + j] + k[6 + j]);
          gk[3][j] = k[6 + j];
        }
        for (int i = 0; i < 4; ++i) {
          row[(4 * i + 0) * ci + c] = gk[i][0];
          row[(4 * i + 1) * ci + c] = 0.5f * (gk[i][0] + gk[i][1] + gk[i][2]);
          row[(4 * i + 2) * ci + c] = 0.5f * (gk[i][0] - gk[i][1] + gk[i][2]);
          row[(4 * i + 3) * ci + c] = gk[i][2];
        }
      }
      for (int xi = 0; xi < 16; ++xi) store_bf16(row.data() + xi * ci, u + (xi * co + o) * ci, ci);
    }
  });
}
