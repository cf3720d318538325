# OpenMP entry points for the kernels, with serial stand-ins so that the same
# source builds without OpenMP (FASTGN_NO_OPENMP=1 or a compiler without it).

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define FASTGN_OPENMP 1
    #define FASTGN_OPENMP_VERSION _OPENMP
    #define fastgn_barrier() _Pragma("omp barrier")
    #else
    #define fastgn_barrier()
    #define FASTGN_OPENMP 0
    #define FASTGN_OPENMP_VERSION 0
    static inline int omp_get_max_threads(void) { return 1; }
    static inline int omp_get_thread_num(void) { return 0; }
    #endif
    """
    bint FASTGN_OPENMP
    int FASTGN_OPENMP_VERSION
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
    # Cython ends each prange inside ``with parallel()`` with ``nowait``:
    # phases that read what the previous one wrote need this between them.
    void fastgn_barrier() noexcept nogil
